// A provider that joins a room late gets the document state and the awareness states of the
// providers already there, without those providers doing anything after it joined.
//
//   node late_joiner.mjs <serverUrl> <roomname> [--query-awareness]
//
// With --query-awareness the late joiner then sends a query-awareness message (type 3) and
// expects one awareness message back holding both earlier peers (the reference Node server
// does not answer queries, so the flag is off for it).
import { EventEmitter } from 'node:events';
import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import { messageAwareness, messageQueryAwareness } from 'y-websocket';
import { check, checkNoDrops, connect, run, sameDoc, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname, rest } = setup('late_joiner.mjs <serverUrl> <roomname> [--query-awareness]');
const queryAwareness = rest.includes('--query-awareness');
const ROOTS = [['notes', 'text'], ['props', 'map']];

/** The client ids in an awareness message (the part after the message type). */
function awarenessClients(decoder) {
  const copy = decoding.createDecoder(decoder.arr.subarray(decoder.pos));
  const update = decoding.createDecoder(decoding.readVarUint8Array(copy));
  const ids = [];
  for (let n = decoding.readVarUint(update); n > 0; n--) {
    ids.push(decoding.readVarUint(update));
    decoding.readVarUint(update); // clock
    decoding.readVarString(update); // state JSON
  }
  return ids;
}

run(async () => {
  const a = connect(serverUrl, roomname, { state: { user: { name: 'Ada', color: '#f00' } } });
  const b = connect(serverUrl, roomname, { state: { user: { name: 'Bo' }, cursor: { index: 3 } } });
  await Promise.all([synced(a), synced(b)]);
  a.doc.getText('notes').insert(0, 'written before the late joiner came');
  b.doc.getMap('props').set('count', 42);
  b.doc.getMap('props').set('big', 'x'.repeat(10_000));

  // The server has both docs' edits and both awareness states once each early peer saw the other's.
  const idA = a.doc.clientID;
  const idB = b.doc.clientID;
  await waitUntil(
    'the early peers to see each other',
    () =>
      sameDoc(a.doc, b.doc, ROOTS) &&
      b.doc.getText('notes').length > 0 &&
      a.doc.getMap('props').has('big') &&
      a.awareness.getStates().has(idB) &&
      b.awareness.getStates().has(idA),
    [[a.doc, 'update'], [b.doc, 'update'], [a.awareness, 'change'], [b.awareness, 'change']],
  );

  // The early peers only renew their awareness every 15 s, so from here on the late joiner
  // can only learn their states from the server.
  const awarenessMessages = [];
  // Fires for every awareness message, also one that changes nothing (like an answer to a
  // query, which repeats known clocks and so raises no awareness event).
  const tap = new EventEmitter();
  const late = connect(serverUrl, roomname, { connect: false, state: { user: { name: 'Late' } } });
  const handle = late.messageHandlers[messageAwareness];
  late.messageHandlers[messageAwareness] = (encoder, decoder, provider, emitSynced, type) => {
    awarenessMessages.push(awarenessClients(decoder));
    handle(encoder, decoder, provider, emitSynced, type);
    tap.emit('message');
  };
  const joinedAt = Date.now();
  late.connect();
  await synced(late);
  await waitUntil(
    'the late joiner to get the state and both awareness states',
    () => sameDoc(late.doc, a.doc, ROOTS) && late.awareness.getStates().has(idA) && late.awareness.getStates().has(idB),
    [[late.doc, 'update'], [late.awareness, 'change']],
    10_000,
  );
  const elapsed = Date.now() - joinedAt;
  check(elapsed < 15_000, `the states came from the server, not a 15 s renewal (${elapsed} ms)`);
  check(late.doc.getText('notes').toString() === 'written before the late joiner came', 'text intact');
  check(late.doc.getMap('props').get('count') === 42, 'number intact');
  check(late.doc.getMap('props').get('big') === 'x'.repeat(10_000), 'long string intact');
  const states = late.awareness.getStates();
  check(JSON.stringify(states.get(idA)) === JSON.stringify({ user: { name: 'Ada', color: '#f00' } }), `A's state: ${JSON.stringify(states.get(idA))}`);
  check(JSON.stringify(states.get(idB)) === JSON.stringify({ user: { name: 'Bo' }, cursor: { index: 3 } }), `B's state: ${JSON.stringify(states.get(idB))}`);

  let queryAnswered = null;
  if (queryAwareness) {
    const before = awarenessMessages.length;
    const encoder = encoding.createEncoder();
    encoding.writeVarUint(encoder, messageQueryAwareness);
    late.ws.send(encoding.toUint8Array(encoder));
    // Only an answer to the query lists both early peers in one message after this point.
    await waitUntil(
      'an awareness answer to the query',
      () => awarenessMessages.slice(before).some((ids) => ids.includes(idA) && ids.includes(idB)),
      [[tap, 'message']],
      10_000,
    );
    queryAnswered = true;
  }

  // The early peers learn about the late joiner too.
  const idLate = late.doc.clientID;
  await waitUntil(
    'the early peers to see the late joiner',
    () => a.awareness.getStates().has(idLate) && b.awareness.getStates().has(idLate),
    [[a.awareness, 'change'], [b.awareness, 'change']],
  );
  checkNoDrops([a, b, late]);
  succeed({ elapsedMs: elapsed, awarenessMessages: awarenessMessages.length, queryAnswered });
});
