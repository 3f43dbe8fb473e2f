// Starts the real ringcast binary (RINGCAST_BIN, built by cargo) on free
// loopback ports, for the client's tests.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { once } from 'node:events';
import { createServer, connect } from 'node:net';

/** A running server: its addresses and a few API calls. It listens on
 * free ports unless `args` names them (`--listen`, `--api-listen`). */
export async function startServer(args = []) {
  const bin = process.env.RINGCAST_BIN;
  if (!bin) throw new Error('RINGCAST_BIN must name the ringcast binary (cargo test -p ringcast --test js_client sets it)');
  const ports = args.includes('--listen') ? [] : ['--listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0'];
  const child = spawn(bin, ['serve', ...ports, '--workers', '2', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const ready = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening ws=(\S+) api=(\S+)/);
      if (m) resolve({ ws: m[1], api: m[2] });
    });
    child.on('exit', (code) => reject(new Error(`ringcast exited ${code}: ${stderr}`)));
  });
  const { ws, api } = await withTimeout(ready, 15000, 'server start');
  const server = {
    child,
    base: `http://${ws}`,
    api: `http://${api}`,
    async post(path, body, type = 'application/json') {
      const response = await fetch(`${server.api}${path}`, {
        method: 'POST', body, headers: { 'Content-Type': type },
      });
      const text = await response.text();
      if (!response.ok) throw new Error(`POST ${path}: ${response.status} ${text}`);
      return text ? JSON.parse(text) : null;
    },
    publish(topic, data) {
      return server.post(`/publish?topic=${encodeURIComponent(topic)}`, JSON.stringify(data));
    },
    async stats() {
      return (await fetch(`${server.api}/stats`)).json();
    },
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGKILL');
      await once(child, 'exit');
    },
  };
  return server;
}

/** A loopback port nothing listens on now. */
export async function freePort() {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** Whether something accepts connections on loopback `port`. */
export function listening(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('connect', () => { socket.destroy(); resolve(true); });
    socket.on('error', () => resolve(false));
  });
}

/** `promise`, or a rejection naming `what` after `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]);
}

/** Resolves once `check()` is truthy, polling every 20 ms; rejects after `ms`. */
export async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Publishes 1..count to `topic` every `everyMs`; resolves once all are sent. */
export async function numbered(server, topic, count, everyMs) {
  for (let n = 1; n <= count; n++) {
    await server.publish(topic, { n });
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** An HS256 JWT of `claims`, signed with `secret`. */
export function hs256(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}
