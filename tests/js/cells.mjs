// Yjs side of the epicenter-server wire interop tests.
//
//   node cells.mjs write <out.bin> <spec.json>   build a doc from a spec, write its full state update
//   node cells.mjs read <in.bin>                 print every root array (entries + JS typeof of each field)
//
// Layout: table `t` is root Y.Array `table:t`, KV is root Y.Array `kv`. Each element is a plain
// JSON object { key, val, ts }; table keys are `<rowId>:<field>`. One live entry per key
// (last-write-wins): writing a key removes its previous entry in the same transaction.
import * as Y from 'yjs';
import { readFileSync, writeFileSync } from 'node:fs';

// Monotonic ms clock: strictly increasing even when several writes share a millisecond,
// so later writes always win on ts.
let last = 0;
const now = () => (last = Math.max(Date.now(), last + 1));

// Must be called inside a transaction so the push and the delete of the stale entry land together.
function setCell(arr, key, val) {
  const items = arr.toArray();
  // Scan backwards so deleting an index doesn't shift the ones still to visit.
  for (let i = items.length - 1; i >= 0; i--) if (items[i].key === key) arr.delete(i, 1);
  arr.push([{ key, val, ts: now() }]);
}

function writeRow(doc, table, row) {
  if (typeof row?.id !== 'string') throw new Error(`row in table "${table}" needs a string id`);
  const arr = doc.getArray(`table:${table}`);
  doc.transact(() => {
    for (const [field, val] of Object.entries(row)) setCell(arr, `${row.id}:${field}`, val);
  });
}

function write(outPath, specPath) {
  const spec = JSON.parse(readFileSync(specPath, 'utf8'));
  if (typeof spec.guid !== 'string') throw new Error('spec.guid must be a string');
  const doc = new Y.Doc({ guid: spec.guid });

  for (const [table, rows] of Object.entries(spec.tables ?? {})) for (const row of rows) writeRow(doc, table, row);
  const kv = doc.getArray('kv');
  for (const [key, val] of Object.entries(spec.kv ?? {})) doc.transact(() => setCell(kv, key, val));
  for (const [table, rows] of Object.entries(spec.overwrite ?? {})) for (const row of rows) writeRow(doc, table, row);
  for (const [table, ids] of Object.entries(spec.deleteRows ?? {})) {
    const arr = doc.getArray(`table:${table}`);
    doc.transact(() => {
      const items = arr.toArray();
      for (let i = items.length - 1; i >= 0; i--) {
        if (ids.some((id) => items[i].key.startsWith(`${id}:`))) arr.delete(i, 1);
      }
    });
  }

  writeFileSync(outPath, Y.encodeStateAsUpdate(doc));
}

function read(inPath) {
  const doc = new Y.Doc();
  Y.applyUpdate(doc, readFileSync(inPath));
  const arrays = {};
  const types = {};
  // Roots decoded from an update are untyped until first accessed; getArray fixes them as arrays
  // (and throws if the root was created as some other shared type).
  for (const name of doc.share.keys()) {
    const entries = doc.getArray(name).toArray();
    arrays[name] = entries;
    // typeof distinguishes number from bigint, which JSON output alone cannot show.
    types[name] = entries.map((e) => ({ key: typeof e?.key, val: typeof e?.val, ts: typeof e?.ts }));
  }
  process.stdout.write(JSON.stringify({ arrays, types }) + '\n');
}

const [mode, ...args] = process.argv.slice(2);
try {
  if (mode === 'write' && args.length === 2) write(...args);
  else if (mode === 'read' && args.length === 1) read(...args);
  else throw new Error('usage: node cells.mjs write <out.bin> <spec.json> | read <in.bin>');
} catch (err) {
  process.stderr.write(`cells.mjs: ${err.message}\n`);
  process.exit(1);
}
