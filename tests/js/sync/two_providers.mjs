// Two stock y-websocket providers in one room converge, with edits going both ways: edits made
// before connecting travel in the sync handshake, edits made while connected (including
// concurrent inserts at one position) travel as live updates.
//
//   node two_providers.mjs <serverUrl> <roomname>
import * as Y from 'yjs';
import { check, checkNoDrops, connect, run, sameDoc, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname } = setup('two_providers.mjs <serverUrl> <roomname>');
const ROOTS = [['notes', 'text'], ['props', 'map'], ['log', 'array']];

run(async () => {
  const docA = new Y.Doc();
  const docB = new Y.Doc();
  // Offline edits: only the sync handshake can carry them across.
  docA.getMap('props').set('a-offline', 1);
  docA.getText('notes').insert(0, 'from A. ');
  docB.getMap('props').set('b-offline', 'two');
  docB.getArray('log').push(['b0']);

  const a = connect(serverUrl, roomname, { doc: docA });
  const b = connect(serverUrl, roomname, { doc: docB });
  await Promise.all([synced(a), synced(b)]);

  const updates = [[docA, 'update'], [docB, 'update']];
  await waitUntil(
    'offline edits to cross',
    () => docA.getMap('props').has('b-offline') && docB.getMap('props').has('a-offline'),
    updates,
  );

  // Live edits, both ways, and two concurrent inserts at the start of the text.
  docA.getText('notes').insert(0, '[A]');
  docB.getText('notes').insert(0, '[B]');
  docA.getArray('log').push(['a1']);
  docB.getMap('props').set('b-live', { nested: [1, 2.5, 'x'] });
  docA.getMap('props').set('a-live', true);

  const complete = (doc) => {
    const text = doc.getText('notes').toString();
    const props = doc.getMap('props');
    return (
      text.includes('[A]') &&
      text.includes('[B]') &&
      text.includes('from A. ') &&
      ['a-offline', 'b-offline', 'a-live', 'b-live'].every((k) => props.has(k)) &&
      doc.getArray('log').length === 2
    );
  };
  await waitUntil('both docs to hold every edit and agree', () => complete(docA) && complete(docB) && sameDoc(docA, docB, ROOTS), updates);

  const props = docB.getMap('props').toJSON();
  check(props['a-offline'] === 1 && props['a-live'] === true, `A's values arrived intact: ${JSON.stringify(props)}`);
  check(
    JSON.stringify(docA.getMap('props').get('b-live')) === JSON.stringify({ nested: [1, 2.5, 'x'] }),
    "B's nested value arrived intact",
  );
  checkNoDrops([a, b]);
  succeed({
    text: docA.getText('notes').toString(),
    props: Object.keys(props).sort(),
    log: docA.getArray('log').toJSON().sort(),
  });
});
