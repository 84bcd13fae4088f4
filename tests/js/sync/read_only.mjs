// Read-only stock providers (token `ro`; `rw` may write). One that makes no edits stays
// connected and receives the writer's edits. One that edits is closed with 4403, which the
// stock provider treats as final (it stops reconnecting), and its edit reaches nobody.
//
//   node read_only.mjs <serverUrl> <roomname>
import { check, checkNoDrops, connect, run, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname } = setup('read_only.mjs <serverUrl> <roomname>');

const text = (provider) => provider.doc.getText('t').toString();

run(async () => {
  const writer = connect(serverUrl, roomname, { params: { token: 'rw' } });
  const reader = connect(serverUrl, roomname, { params: { token: 'ro' } });
  reader.awareness.setLocalStateField('user', 'reader');
  await Promise.all([synced(writer), synced(reader)]);
  writer.doc.getText('t').insert(0, 'from the writer');
  await waitUntil('the reader to get the edit', () => text(reader) === 'from the writer', [
    [reader.doc, 'update'],
  ]);

  // A read-only provider that edits.
  const editor = connect(serverUrl, roomname, { params: { token: 'ro' }, finalCloseExpected: true });
  await synced(editor);
  let closed = null;
  editor.on('closed', (event) => {
    closed = event;
  });
  editor.doc.getText('t').insert(0, 'refused ');
  await waitUntil('the editor to be closed', () => closed !== null, [[editor, 'closed']]);
  check(!editor.shouldConnect, 'the editor stopped reconnecting');

  // An edit made after the refusal reaches everyone connected; the refused one does not.
  const late = connect(serverUrl, roomname, { params: { token: 'rw' } });
  await synced(late);
  late.doc.getText('t').insert(text(late).length, ' and marker');
  const marked = (p) => text(p).endsWith(' and marker');
  await waitUntil('the marker to arrive', () => marked(writer) && marked(reader), [
    [writer.doc, 'update'],
    [reader.doc, 'update'],
  ]);
  for (const p of [writer, reader, late]) {
    check(!text(p).includes('refused'), `the refused edit arrived: ${text(p)}`);
  }
  checkNoDrops([writer, reader, late]);
  succeed({ code: closed.code, reason: closed.reason, text: text(reader) });
});
