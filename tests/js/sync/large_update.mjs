// One large update (default 4 MiB of text in one transaction) sent by one provider arrives
// intact at a provider in the same room, live, and at a provider joining afterwards, in the
// sync handshake. The text mixes ASCII with 2- and 4-byte UTF-8 characters (the latter are
// UTF-16 surrogate pairs in JS), and is compared by SHA-256.
//
//   node large_update.mjs <serverUrl> <roomname> [bytes]
import { createHash, randomBytes } from 'node:crypto';
import { check, checkNoDrops, connect, run, setup, succeed, synced, waitUntil } from './common.mjs';

const { serverUrl, roomname, rest } = setup('large_update.mjs <serverUrl> <roomname> [bytes]');
const BYTES = Number(rest[0] ?? 4 * 1024 * 1024);

/** Random text of at least `bytes` UTF-8 bytes. */
function bigText(bytes) {
  const parts = [];
  let size = 0;
  while (size < bytes) {
    const part = randomBytes(750).toString('base64') + 'é😀\n';
    parts.push(part);
    size += Buffer.byteLength(part);
  }
  return parts.join('');
}

const sha256 = (s) => createHash('sha256').update(s).digest('hex');

run(async () => {
  check(Number.isInteger(BYTES) && BYTES > 0, `bytes ${rest[0]}`);
  const sender = connect(serverUrl, roomname);
  const receiver = connect(serverUrl, roomname);
  await Promise.all([synced(sender), synced(receiver)]);

  const text = bigText(BYTES);
  const want = { length: text.length, sha256: sha256(text) };
  let updateBytes = 0;
  sender.doc.once('update', (update) => (updateBytes = update.length));
  sender.doc.getText('big').insert(0, text);
  check(updateBytes >= BYTES, `one update of at least ${BYTES} bytes (${updateBytes})`);

  const got = (doc) => doc.getText('big').length === want.length;
  const started = Date.now();
  await waitUntil('the large update to arrive', () => got(receiver.doc), [[receiver.doc, 'update']]);
  const liveMs = Date.now() - started;
  check(sha256(receiver.doc.getText('big').toString()) === want.sha256, 'live: text intact');

  // A late joiner gets the same content from the server's state.
  const late = connect(serverUrl, roomname);
  await synced(late);
  await waitUntil('the late joiner to get the large text', () => got(late.doc), [[late.doc, 'update']]);
  check(sha256(late.doc.getText('big').toString()) === want.sha256, 'late joiner: text intact');
  checkNoDrops([sender, receiver, late]);
  succeed({ updateBytes, textLength: want.length, liveMs, lateMs: Date.now() - started - liveMs });
});
