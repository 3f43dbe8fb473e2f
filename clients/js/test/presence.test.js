// Presence through the client, in Node with `ws`, against the real binary
// with `--presence 'room.*'` and JWT users: presence(), presenceStats(),
// their errors, and join/leave events (issue 22).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Ringcast } from '../ringcast.js';
import { startServer, until, hs256 } from './server.js';

const secret = 'a-test-secret-of-32-bytes-at-least!';
let server;
const opened = [];

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringcast-js-presence-'));
  writeFileSync(join(dir, 'secret'), secret);
  server = await startServer(['--jwt-hmac-secret-file', join(dir, 'secret'), '--presence', 'room.*']);
});

after(async () => {
  for (const rc of opened) rc.close();
  await server?.stop();
});

/** A client of user `sub` (with an `info` claim when given), open. */
async function client(sub, info) {
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + 3600 };
  if (info !== undefined) claims.info = info;
  const rc = new Ringcast(server.base, { WebSocket, token: hs256(secret, claims), random: () => 0 });
  opened.push(rc);
  await until(() => rc.state === 'open', 10000, `user ${sub} connected`);
  return rc;
}

/** Subscribes `rc` to `topic` (with `options`) and waits for the server's `subscribed`. */
async function subscribed(rc, topic, options) {
  let done = false;
  const off = rc.on('subscribed', (t) => { if (t === topic) done = true; });
  rc.subscribe(topic, () => {}, options);
  await until(() => done, 10000, `subscribed to ${topic}`);
  off();
}

test('presence lists the three members, presenceStats counts 3 clients of 2 users', async () => {
  const members = [];
  for (const [sub, info] of [['42', { name: 'Ann' }], ['42', undefined], ['7', undefined]]) {
    const rc = await client(sub, info);
    await subscribed(rc, 'room.1');
    members.push(rc);
  }
  const { clients, truncated } = await members[2].presence('room.1');
  assert.equal(truncated, false);
  assert.equal(clients.length, 3);
  assert.deepEqual(clients.map((m) => m.user).sort(), ['42', '42', '7']);
  assert.equal(new Set(clients.map((m) => m.client)).size, 3, 'a distinct id per connection');
  assert.ok(clients.every((m) => typeof m.client === 'string'));
  assert.deepEqual(clients.filter((m) => m.info !== null).map((m) => m.info), [{ name: 'Ann' }], 'the info claim');
  assert.deepEqual(await members[0].presenceStats('room.1'), { clients: 3, users: 2 });
  // Several queries in flight on one topic are answered in order.
  const [a, b, c] = await Promise.all([
    members[1].presenceStats('room.1'), members[1].presence('room.1'), members[1].presenceStats('room.1'),
  ]);
  assert.deepEqual([a, b.clients.length, c], [{ clients: 3, users: 2 }, 3, { clients: 3, users: 2 }]);
  for (const rc of members) rc.close();
});

test('a non-subscriber is refused with forbidden, a topic without presence with its reason', async () => {
  const rc = await client('9');
  await subscribed(rc, 'room.other');
  await assert.rejects(rc.presence('room.1'), { message: 'forbidden' });
  await assert.rejects(rc.presenceStats('room.1'), { message: 'forbidden' });
  await subscribed(rc, 'news');
  await assert.rejects(rc.presence('news'), { message: 'presence is off for this topic' });
  // The connection is still usable.
  assert.deepEqual(await rc.presenceStats('room.other'), { clients: 1, users: 1 });
  rc.close();
});

test('an observer with joinLeave sees joins first true/false/true, leaves last false/true/true, and keeps them across a reconnect', async () => {
  const observer = await client('observer');
  const joins = [];
  const leaves = [];
  const events = [];
  observer.on('join', (j) => events.push(`join ${j.user}`));
  observer.on('leave', (l) => events.push(`leave ${l.user}`));
  await subscribed(observer, 'room.2', { onJoin: (j) => joins.push(j), onLeave: (l) => leaves.push(l) });

  const three = [];
  for (const [i, [sub, info]] of [['42', { name: 'Ann' }], ['42', undefined], ['7', undefined]].entries()) {
    const rc = await client(sub, info);
    await subscribed(rc, 'room.2');
    three.push(rc);
    await until(() => joins.length === i + 1, 10000, `join ${i + 1}`);
  }
  assert.deepEqual(joins.map((j) => [j.op, j.topic, j.user, j.first]),
    [['join', 'room.2', '42', true], ['join', 'room.2', '42', false], ['join', 'room.2', '7', true]]);
  assert.deepEqual(joins[0].info, { name: 'Ann' });
  assert.equal(joins[1].info, null);
  const listed = (await observer.presence('room.2')).clients;
  assert.equal(listed.length, 4, 'the three and the observer');
  const own = listed.find((m) => m.user === 'observer').client;
  assert.ok(!joins.some((j) => j.client === own), 'no join of its own');

  for (const [i, rc] of three.entries()) {
    rc.close();
    await until(() => leaves.length === i + 1, 10000, `leave ${i + 1}`);
  }
  assert.deepEqual(leaves.map((l) => [l.op, l.topic, l.user, l.last]),
    [['leave', 'room.2', '42', false], ['leave', 'room.2', '42', true], ['leave', 'room.2', '7', true]]);
  assert.deepEqual(leaves.map((l) => l.client), joins.map((j) => j.client), 'each leave names its join');
  assert.deepEqual(events, ['join 42', 'join 42', 'join 7', 'leave 42', 'leave 42', 'leave 7'], 'the join and leave events too');
  assert.deepEqual(await observer.presenceStats('room.2'), { clients: 1, users: 1 });

  // After a rebalance (1001) the client resubscribes with join_leave.
  const states = [];
  let resubscribed = 0;
  observer.on('state', (s) => states.push(s));
  observer.on('subscribed', (t) => { if (t === 'room.2') resubscribed += 1; });
  await server.post('/rebalance?fraction=1&period=10ms');
  await until(() => states.includes('reconnecting') && observer.state === 'open' && resubscribed === 1,
    10000, 'the observer moved and back');
  const late = await client('8');
  await subscribed(late, 'room.2');
  await until(() => joins.length === 4, 10000, 'a join after the reconnect');
  assert.deepEqual([joins[3].user, joins[3].first], ['8', true]);
  late.close();
  await until(() => leaves.length === 4, 10000, 'its leave');
  assert.deepEqual([leaves[3].user, leaves[3].last], ['8', true]);
  observer.close();
});

test('joinLeave asked on a topic already held takes it again with join_leave', async () => {
  const rc = await client('5');
  await subscribed(rc, 'room.3');
  const joins = [];
  await subscribed(rc, 'room.3', { onJoin: (j) => joins.push(j) });
  const other = await client('6');
  await subscribed(other, 'room.3');
  await until(() => joins.length === 1, 10000, 'the join');
  assert.equal(joins[0].user, '6');
  assert.deepEqual(await rc.presenceStats('room.3'), { clients: 2, users: 2 });
  other.close();
  rc.close();
});
