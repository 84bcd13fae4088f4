// When a provider leaves, the providers that stay see its awareness state removed. Three ways
// to leave, in turn:
//   destroy    `provider.destroy()`: the stock client announces a null state, then closes;
//   close      a clean WebSocket close (code 1000) with no awareness message before it;
//   drop       the TCP connection is cut without a close frame (`ws.terminate()`).
// Only the server can tell the others about the last two, so they check that it broadcasts
// the removal when a connection closes.
//
//   node awareness_removal.mjs <serverUrl> <roomname>
import { check, checkNoDrops, connect, destroy, run, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname } = setup('awareness_removal.mjs <serverUrl> <roomname>');

/** Awareness removes a remote state on its own after 30 s of silence; removals must come sooner. */
const OUTDATED_MS = 30_000;

run(async () => {
  const observer = connect(serverUrl, roomname, { state: { user: 'observer' } });
  const leavers = ['destroy', 'close', 'drop'].map((how) =>
    connect(serverUrl, roomname, { state: { user: how, how } }),
  );
  await Promise.all([observer, ...leavers].map((p) => synced(p)));
  const stateSetAt = Date.now();

  const seen = () => observer.awareness.getStates();
  await waitUntil(
    'the observer to see every leaver',
    () => leavers.every((p) => seen().has(p.doc.clientID)),
    [[observer.awareness, 'change']],
  );

  // Why each removal happened, from the observer's side: the origin of the awareness change.
  const removedBy = new Map();
  observer.awareness.on('change', ({ removed }, origin) => {
    for (const id of removed) removedBy.set(id, origin === 'timeout' ? 'timeout' : 'remote');
  });

  const results = {};
  for (const leaver of leavers) {
    const how = leaver.awareness.getLocalState().how;
    const id = leaver.doc.clientID;
    const started = Date.now();
    if (how === 'destroy') {
      destroy(leaver);
    } else {
      // Stop the provider from reconnecting, then close its socket behind its back.
      leaver.shouldConnect = false;
      if (how === 'close') leaver.ws.close(1000, 'bye');
      else leaver.ws.terminate();
    }
    await waitUntil(
      `the observer to see the "${how}" leaver's state removed`,
      () => !seen().has(id),
      [[observer.awareness, 'change']],
      15_000,
    );
    check(removedBy.get(id) === 'remote', `"${how}": removed by the server, not by a local timeout (${removedBy.get(id)})`);
    check(Date.now() - stateSetAt < OUTDATED_MS, `"${how}": removed before the 30 s awareness timeout`);
    results[how] = Date.now() - started;
  }

  // The observer itself is still known to itself and nobody else is left.
  check(seen().size === 1 && seen().has(observer.doc.clientID), `only the observer left: ${[...seen().keys()]}`);
  checkNoDrops([observer]);
  succeed({ removalMs: results });
});
