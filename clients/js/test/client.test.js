// The client against real servers (the ringcast binary), in Node with the
// `ws` package as its WebSocket: backoff, 4001/4003 handling and recovery.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Ringcast, backoff, formatPositions, parsePositions } from '../ringcast.js';
import { startServer, until, numbered, withTimeout, hs256 } from './server.js';

test('backoff is full jitter, doubling from 0.5 s to a 30 s cap', () => {
  const half = () => 0.5;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 40].map((a) => backoff(a, half)),
    [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
  assert.equal(backoff(3, () => 0), 0);
  assert.equal(backoff(9, () => 0.999999), 29999);
  // A seeded source gives the same schedule every time.
  const seeded = (seed) => () => { seed = (seed * 16807) % 2147483647; return seed / 2147483647; };
  const a = [0, 1, 2, 3].map((n, _, __, r = seeded(7)) => backoff(n, r));
  const b = [0, 1, 2, 3].map((n, _, __, r = seeded(7)) => backoff(n, r));
  assert.deepEqual(a, b);
});

test('positions round-trip through the SSE id format', () => {
  const text = formatPositions(new Map([['a', { offset: 12, epoch: 'Jx3k' }], ['room:1', { offset: 7, epoch: 'Q_-z' }]]));
  assert.equal(text, 'a:12:Jx3k;room:1:7:Q_-z');
  assert.deepEqual([...parsePositions(text)], [['a', { offset: 12, epoch: 'Jx3k' }], ['room:1', { offset: 7, epoch: 'Q_-z' }]]);
});

function client(server, options = {}) {
  return new Ringcast(server.base, { WebSocket, ...options });
}

function stateIs(rc, state) {
  return until(() => rc.state === state, 10000, `state ${state}`);
}

test('after a rebalance (1001) the client reconnects with growing delays, resets after a stable minute, and recovers every message once', async () => {
  const server = await startServer(['--history', 'h.*=1000/10m']);
  let clock = 0;
  const delays = [];
  const rc = client(server, {
    random: () => 0.5,
    now: () => clock,
    setTimeout: (fn, ms) => { if (ms > 0) delays.push(ms); return setTimeout(fn, ms); },
  });
  const got = [];
  rc.subscribe('h.a', (data) => got.push(data.n));
  try {
    await stateIs(rc, 'open');
    await until(() => rc.positions().has('h.a'), 5000, 'subscribed');
    const sending = numbered(server, 'h.a', 60, 20);
    for (const advance of [0, 0, 61000]) {
      await until(() => got.length > 0, 5000, 'a message');
      const before = delays.length;
      clock += advance;
      await server.post('/rebalance?fraction=1&period=10ms');
      await until(() => delays.length > before, 5000, 'a reconnect scheduled');
      await stateIs(rc, 'open');
    }
    await sending;
    await until(() => got.length >= 60, 10000, 'every message');
    assert.deepEqual(got, Array.from({ length: 60 }, (_, i) => i + 1), 'each once, in order');
    assert.deepEqual(delays, [250, 500, 250], 'attempt 0, 1, then 0 again after a stable minute');
  } finally {
    rc.close();
    await server.stop();
  }
});

test('recovered:false is surfaced as a reset event', async () => {
  const server = await startServer(['--history', 'h.*=1000/10m']);
  const rc = client(server, { random: () => 0 });
  const resets = [];
  rc.on('reset', (topic) => resets.push(topic));
  rc.subscribe('h.b', () => {});
  try {
    await until(() => rc.positions().has('h.b'), 5000, 'subscribed');
    rc.topics.get('h.b').epoch = 'gone'; // as after a server restart
    await server.post('/rebalance?fraction=1&period=10ms');
    await until(() => resets.length === 1, 5000, 'a reset');
    assert.deepEqual(resets, ['h.b']);
    assert.notEqual(rc.positions().get('h.b').epoch, 'gone', 'the new epoch is taken');
  } finally {
    rc.close();
    await server.stop();
  }
});

async function authServer() {
  const dir = mkdtempSync(join(tmpdir(), 'ringcast-js-'));
  const secret = 'a-test-secret-of-32-bytes-at-least!';
  writeFileSync(join(dir, 'secret'), secret);
  const server = await startServer(['--jwt-hmac-secret-file', join(dir, 'secret'), '--jwt-leeway', '0s']);
  return { server, token: (exp) => hs256(secret, { sub: 'alice', exp: Math.floor(Date.now() / 1000) + exp }) };
}

test('4001 (token expired) calls getToken and reconnects with the new token', async () => {
  const { server, token } = await authServer();
  let asked = 0;
  const rc = client(server, {
    token: token(1),
    getToken: async () => { asked += 1; return token(3600); },
    random: () => 0,
  });
  const got = [];
  rc.subscribe('news', (data) => got.push(data));
  try {
    await stateIs(rc, 'open');
    await until(() => asked === 1, 10000, 'getToken after 4001');
    await stateIs(rc, 'open');
    await until(async () => (await server.publish('news', 'fresh')).subscribers === 1, 5000, 'resubscribed');
    await until(() => got.includes('fresh'), 5000, 'a message on the new token');
    assert.equal(rc.token.split('.').length, 3);
  } finally {
    rc.close();
    await server.stop();
  }
});

test('4003 (disconnected) stops for good', async () => {
  const { server, token } = await authServer();
  const rc = client(server, { token: token(3600), random: () => 0 });
  const closed = withTimeout(new Promise((resolve) => rc.on('close', resolve)), 10000, 'close event');
  try {
    await stateIs(rc, 'open');
    await server.post('/disconnect?user=alice');
    const why = await closed;
    assert.equal(why.code, 4003);
    assert.equal(rc.state, 'closed');
    assert.equal(rc.timer, null, 'no reconnect scheduled');
    const users = await (await fetch(`${server.api}/users/alice`)).json();
    assert.equal(users.connections, 0);
  } finally {
    rc.close();
    await server.stop();
  }
});

test('falls back to long-poll when WebSocket is refused, tries WebSocket again later, and loses nothing', async () => {
  const server = await startServer(['--history', 'h.*=1000/10m', '--poll-timeout', '1s']);
  const rc = client(server, {
    random: () => 0,
    fallbackAfter: 2,
    retryWebSocketAfter: 1500,
    transports: ['websocket', 'poll'],
    paths: { websocket: '/refused' }, // as through a proxy without the Upgrade map
  });
  const switched = [];
  rc.on('transport', (t) => switched.push(t));
  const got = [];
  rc.subscribe('h.f', (data) => got.push(data.n));
  try {
    await until(() => rc.transport === 'poll' && rc.state === 'open', 10000, 'on long-poll');
    await until(() => rc.positions().has('h.f'), 5000, 'a position');
    rc.paths.websocket = '/ws'; // the network lets WebSocket through again
    const sending = numbered(server, 'h.f', 120, 20);
    await until(() => rc.transport === 'websocket' && rc.state === 'open', 10000, 'back on WebSocket');
    await sending;
    await until(() => got.length >= 120, 10000, 'every message');
    assert.deepEqual(got, Array.from({ length: 120 }, (_, i) => i + 1), 'each once, in order');
    assert.deepEqual(switched, ['poll', 'websocket']);
  } finally {
    rc.close();
    await server.stop();
  }
});
