// Many stock providers (default 50) in one room converge: each writes its own map key, array
// item and text insert (half of them before connecting, half once synced), and every doc ends
// with all of the writes and the same content.
//
//   node many_providers.mjs <serverUrl> <roomname> [count]
import * as Y from 'yjs';
import { check, checkNoDrops, connect, run, sameDoc, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname, rest } = setup('many_providers.mjs <serverUrl> <roomname> [count]');
const COUNT = Number(rest[0] ?? 50);
const ROOTS = [['text', 'text'], ['by-peer', 'map'], ['items', 'array']];

function write(doc, i) {
  doc.transact(() => {
    doc.getMap('by-peer').set(`peer-${i}`, { i, half: i * 0.5 });
    doc.getArray('items').push([i]);
    doc.getText('text').insert(0, `<${i}>`);
  });
}

run(async () => {
  check(Number.isInteger(COUNT) && COUNT >= 2, `count ${rest[0]}`);
  const providers = [];
  for (let i = 0; i < COUNT; i++) {
    const doc = new Y.Doc();
    // Even peers write offline: their edits go out in the sync handshake.
    if (i % 2 === 0) write(doc, i);
    providers.push(connect(serverUrl, roomname, { doc, state: { peer: i } }));
  }
  const started = Date.now();
  await Promise.all(providers.map((p) => synced(p)));
  // Odd peers write live.
  providers.forEach((p, i) => i % 2 === 1 && write(p.doc, i));

  const docs = providers.map((p) => p.doc);
  const complete = (doc) => doc.getMap('by-peer').size === COUNT && doc.getArray('items').length === COUNT;
  await waitUntil(
    `all ${COUNT} docs to hold all ${COUNT} writes and agree`,
    () => docs.every(complete) && docs.every((d) => sameDoc(d, docs[0], ROOTS)),
    docs.map((d) => [d, 'update']),
  );
  const ms = Date.now() - started;

  const first = docs[0];
  const items = first.getArray('items').toArray().sort((x, y) => x - y);
  check(items.every((v, i) => v === i), `every peer's item once: ${items}`);
  const map = first.getMap('by-peer');
  for (let i = 0; i < COUNT; i++) {
    const v = map.get(`peer-${i}`);
    check(v?.i === i && v?.half === i * 0.5, `peer-${i}: ${JSON.stringify(v)}`);
  }
  const text = first.getText('text').toString();
  for (let i = 0; i < COUNT; i++) check(text.includes(`<${i}>`), `text holds <${i}>`);
  check(text.length === [...Array(COUNT).keys()].reduce((n, i) => n + `<${i}>`.length, 0), 'text length');
  checkNoDrops(providers);
  succeed({ providers: COUNT, convergedMs: ms, textLength: text.length });
});
