// A stock y-websocket provider meets the Rust `SyncProvider` in one room. The Rust side is
// already connected and has written `m["from-rust"]`; this script joins with an awareness state
// of its own, writes `m["from-js"]`, waits for the Rust write, then for the Rust provider's
// awareness state `{"user": "rust"}` (which the Rust side sets once it has seen this one).
//
//   node rust_provider.mjs <serverUrl> <roomname>
//
// Prints `{"event": "ready", "clientId": ...}` once synced with the Rust value in the doc, then
// `{"ok": true, "map": ..., "rust": {"clientId": ..., "state": ...}}`.
import { check, checkNoDrops, connect, emit, run, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname } = setup('rust_provider.mjs <serverUrl> <roomname>');

run(async () => {
  const provider = connect(serverUrl, roomname, { state: { user: 'js' } });
  const doc = provider.doc;
  const m = doc.getMap('m');
  await synced(provider);
  m.set('from-js', { lang: 'js', tags: ['a', 'b'], ok: true });

  await waitUntil('the Rust write to arrive', () => m.has('from-rust'), [[doc, 'update']]);
  check(m.get('from-rust') === 'hello from rust', `the Rust value arrived intact: ${JSON.stringify(m.get('from-rust'))}`);
  emit({ event: 'ready', clientId: doc.clientID });

  // The Rust provider's state: any other client whose state has `user: "rust"`.
  const rust = () =>
    [...provider.awareness.getStates()].find(([id, state]) => id !== doc.clientID && state?.user === 'rust');
  await waitUntil("the Rust provider's awareness state", () => rust() !== undefined, [[provider.awareness, 'change']]);
  const [clientId, state] = rust();

  checkNoDrops([provider]);
  succeed({ map: m.toJSON(), rust: { clientId, state } });
});
