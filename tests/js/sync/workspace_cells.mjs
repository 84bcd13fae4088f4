// A stock provider on a workspace doc, reading and writing rows as cells: each table `t` is the
// root Y.Array `table:t` of plain objects `{ key: "<rowId>:<field>", val, ts }`, last write wins
// per key by the highest `ts`. Steps, each announced with an `{"event": ...}` line so the
// driver can check the REST side in between:
//
//   written    pushed the cells of `spec.write` (one per field, the id included);
//   seen       a row with the id and values of `spec.expect` showed up live (written over REST
//              by the driver), each cell once, with a number `ts` and the right value types;
//   edited     overwrote that row's title with `spec.editTitle` (higher `ts`, old entry deleted).
//
// Finally a fresh provider joins and must see both rows, the edit included.
//
//   node workspace_cells.mjs <serverUrl> <roomname> <spec-json>
//   spec: {"table": "posts", "write": {row}, "expect": {row}, "editTitle": "..."}
import { check, checkNoDrops, connect, emit, run, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname, rest } = setup('workspace_cells.mjs <serverUrl> <roomname> <spec-json>');
const spec = JSON.parse(rest[0] ?? 'null');

/** The entries of row `id` in `arr`, grouped by field. */
function cells(arr, id) {
  const byField = new Map();
  for (const entry of arr.toArray()) {
    if (typeof entry?.key !== 'string' || !entry.key.startsWith(`${id}:`)) continue;
    const field = entry.key.slice(id.length + 1);
    byField.set(field, [...(byField.get(field) ?? []), entry]);
  }
  return byField;
}

/** True once row `id` in `arr` has exactly the fields and values of `row` (newest `ts` wins). */
function hasRow(arr, id, row) {
  const found = cells(arr, id);
  return (
    found.size === Object.keys(row).length &&
    Object.entries(row).every(([field, val]) => {
      const entries = found.get(field) ?? [];
      const newest = entries.reduce((a, b) => (b.ts > a.ts ? b : a), entries[0]);
      return newest !== undefined && JSON.stringify(newest.val) === JSON.stringify(val);
    })
  );
}

/** Checks the shape of every entry of row `id`: one entry per field, JS types as written. */
function checkRow(arr, id, row) {
  const out = {};
  for (const [field, entries] of cells(arr, id)) {
    check(entries.length === 1, `${id}:${field} has one entry (${entries.length})`);
    const [{ key, val, ts }] = entries;
    check(typeof ts === 'number' && Number.isFinite(ts), `${key}: ts is a finite number (${typeof ts} ${ts})`);
    check(typeof val === typeof row[field], `${key}: val is a ${typeof row[field]} (${typeof val})`);
    out[field] = { val, ts };
  }
  return out;
}

run(async () => {
  check(typeof spec?.table === 'string' && spec.write?.id && spec.expect?.id && spec.editTitle, 'spec');
  const name = `table:${spec.table}`;
  const writer = connect(serverUrl, roomname);
  await synced(writer);
  const arr = writer.doc.getArray(name);
  check(!arr.toArray().some((e) => e?.key?.startsWith(`${spec.write.id}:`)), 'the JS row is new');

  const ts = Date.now();
  writer.doc.transact(() => {
    arr.push(Object.entries(spec.write).map(([field, val]) => ({ key: `${spec.write.id}:${field}`, val, ts })));
  });
  emit({ event: 'written', id: spec.write.id, ts });

  const id = spec.expect.id;
  await waitUntil(`row ${id} in ${name}`, () => hasRow(arr, id, spec.expect), [[writer.doc, 'update']]);
  const seen = checkRow(arr, id, spec.expect);
  emit({ event: 'seen', id, cells: seen });

  // Overwrite the title: the newest `ts` wins, and the replaced entry goes in the same transaction.
  const titleKey = `${id}:title`;
  const editTs = Math.max(Date.now(), seen.title.ts + 1);
  writer.doc.transact(() => {
    const i = arr.toArray().findIndex((e) => e?.key === titleKey);
    arr.delete(i, 1);
    arr.push([{ key: titleKey, val: spec.editTitle, ts: editTs }]);
  });
  emit({ event: 'edited', id, ts: editTs });

  // A fresh provider must get both rows, the edit included, from the server.
  const reader = connect(serverUrl, roomname);
  await synced(reader);
  const readArr = reader.doc.getArray(name);
  const edited = { ...spec.expect, title: spec.editTitle };
  await waitUntil(
    'a fresh provider to see both rows',
    () => hasRow(readArr, spec.write.id, spec.write) && hasRow(readArr, id, edited),
    [[reader.doc, 'update']],
  );
  const rows = { [spec.write.id]: checkRow(readArr, spec.write.id, spec.write), [id]: checkRow(readArr, id, edited) };
  check(rows[id].title.ts === editTs, `the edit kept its ts (${rows[id].title.ts})`);
  checkNoDrops([writer, reader]);
  succeed({ rows });
});
