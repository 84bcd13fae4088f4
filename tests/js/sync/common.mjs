// Shared helpers of the y-websocket client scripts in this directory.
//
// Every script takes `<serverUrl> <roomname>` as its first two arguments and hands them to a
// stock `WebsocketProvider` unchanged, so the same script runs against the reference Node server
// (`ws://127.0.0.1:<port>` + any room) and against epicenter-server
// (`ws://127.0.0.1:<port>/workspaces/<ws>` + `sync`). A script prints exactly one JSON line on
// stdout: `{"ok": true, ...}` on success, or `{"ok": false, "error": ...}` with a non-zero exit
// code on failure. Scripts with intermediate steps print `{"event": ...}` lines before it.
//
// Waiting is always for an event or a condition; timeouts only guard against hangs.
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import WebSocket from 'ws';

/** Guard for the whole script (env `SYNC_JS_TIMEOUT_MS`, default 60 s). */
const SCRIPT_TIMEOUT_MS = Number(process.env.SYNC_JS_TIMEOUT_MS ?? 60_000);

/** Default guard for one wait. */
export const WAIT_TIMEOUT_MS = Number(process.env.SYNC_JS_WAIT_TIMEOUT_MS ?? 30_000);

const providers = new Set();

/** Prints one JSON line on stdout. */
export function emit(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

/** Reports failure and exits with code 1. */
export function fail(error, details = {}) {
  emit({ ok: false, error: String(error?.stack ?? error), ...details });
  process.exit(1);
}

/** Reports success, closes every provider and exits with code 0. */
export function succeed(details = {}) {
  for (const p of providers) p.destroy();
  emit({ ok: true, ...details });
  process.exit(0);
}

/** Throws (failing the script) unless `cond`. */
export function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

/**
 * Parses `<serverUrl> <roomname> [extra...]` from the command line, arms the script-wide guard
 * and turns stray errors into a failure line.
 */
export function setup(usage) {
  const [serverUrl, roomname, ...rest] = process.argv.slice(2);
  if (!serverUrl || !roomname) {
    process.stderr.write(`usage: node ${usage}\n`);
    process.exit(64);
  }
  const guard = setTimeout(
    () => fail(`script did not finish within ${SCRIPT_TIMEOUT_MS} ms`),
    SCRIPT_TIMEOUT_MS,
  );
  guard.unref();
  // Every provider adds a process `exit` listener; many providers are expected here.
  process.setMaxListeners(0);
  process.on('uncaughtException', (err) => fail(err));
  process.on('unhandledRejection', (err) => fail(err));
  return { serverUrl, roomname, rest };
}

/** Runs `main` and reports a thrown error as a failure. */
export function run(main) {
  main().catch((err) => fail(err));
}

/**
 * A stock `WebsocketProvider` on a fresh doc. BroadcastChannel is off: Node 20 has a global
 * BroadcastChannel, and in-process providers would otherwise sync through it without the server.
 * `params` go in the URL's query (e.g. `{ token }`). A final close (4400-4499) fails the script
 * unless `finalCloseExpected`.
 */
export function connect(
  serverUrl,
  roomname,
  { doc = new Y.Doc(), connect = true, state, params, finalCloseExpected = false } = {},
) {
  const provider = new WebsocketProvider(serverUrl, roomname, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    connect,
    params,
  });
  if (state !== undefined) provider.awareness.setLocalState(state);
  providers.add(provider);
  /** Connections this provider lost or closed so far. */
  provider.closes = 0;
  provider.on('connection-close', () => provider.closes++);
  // The provider retries on its own; one note per provider is enough to explain a timeout.
  let reported = false;
  provider.on('connection-error', (event) => {
    if (reported) return;
    reported = true;
    process.stderr.write(`connection error on ${provider.url}: ${event?.message ?? event}\n`);
  });
  provider.on('closed', ({ code, reason }) => {
    if (!finalCloseExpected) fail(`the server closed ${provider.url} for good: ${code} ${reason}`);
  });
  return provider;
}

/** Fails unless every provider kept its first connection (none was dropped and reopened). */
export function checkNoDrops(list) {
  const dropped = list.filter((p) => p.closes !== 0).length;
  check(dropped === 0, `${dropped} of ${list.length} providers lost their connection`);
}

/** Destroys `provider` (closing its socket) and forgets it. */
export function destroy(provider) {
  providers.delete(provider);
  provider.destroy();
}

/**
 * Resolves once `predicate()` is true. It is checked now and after every `event` of every
 * emitter in `sources` (pairs `[emitter, eventName]`); rejects after `timeoutMs`.
 */
export function waitUntil(label, predicate, sources, timeoutMs = WAIT_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const off = [];
    const done = (err) => {
      clearTimeout(timer);
      for (const f of off) f();
      if (err) reject(err);
      else resolve();
    };
    const test = () => {
      let ok;
      try {
        ok = predicate();
      } catch (err) {
        done(err);
        return;
      }
      if (ok) done();
    };
    const timer = setTimeout(
      () => done(new Error(`timed out after ${timeoutMs} ms waiting for ${label}`)),
      timeoutMs,
    );
    for (const [emitter, event] of sources) {
      emitter.on(event, test);
      off.push(() => emitter.off(event, test));
    }
    test();
  });
}

/** Resolves once `provider` finished the sync handshake with the server. */
export function synced(provider, timeoutMs = WAIT_TIMEOUT_MS) {
  return waitUntil(`sync with ${provider.url}`, () => provider.synced, [[provider, 'sync']], timeoutMs);
}

/** Whole-document equality: same state vector and same content of the named roots. */
export function sameDoc(a, b, roots) {
  const sv = (d) => Buffer.from(Y.encodeStateVector(d)).toString('base64');
  if (sv(a) !== sv(b)) return false;
  return roots.every(([name, type]) => stable(get(a, name, type)) === stable(get(b, name, type)));
}

/** JSON with object keys sorted: Y.Map iterates in local insertion order, which peers differ on. */
export function stable(value) {
  return JSON.stringify(value, (_key, v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)))
      : v,
  );
}

function get(doc, name, type) {
  if (type === 'text') return doc.getText(name).toString();
  if (type === 'map') return doc.getMap(name).toJSON();
  return doc.getArray(name).toJSON();
}
