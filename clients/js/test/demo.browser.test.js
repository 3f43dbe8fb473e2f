// The demo page and ringcast.js in headless Debian Chromium (playwright-core
// with executablePath; no browser is ever downloaded), served by the real
// binary with --demo so the page has a local http origin.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchChromium } from './chromium.js';
import { startServer, until, numbered } from './server.js';
import { startNginx } from './nginx.js';

let browser;
let server;

before(async () => {
  browser = await launchChromium();
  server = await startServer(['--demo']);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function openPage(query = '', base = server.base) {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  await page.goto(`${base}/${query}`);
  // Every state the client went through, in order.
  await page.evaluate(() => {
    window.states = [];
    window.rc.on('state', (s) => window.states.push(s));
  });
  await page.waitForFunction(() => window.rc.state === 'open', null, { timeout: 15000 });
  // Subscribed: the server has answered with the topic's position.
  await page.waitForFunction(() => window.rc.positions().size === 1, null, { timeout: 15000 });
  return page;
}

async function received(page) {
  return page.evaluate(() => window.received.map((r) => r.data.n));
}

async function expectAll(page, count) {
  await until(async () => (await received(page)).length >= count, 20000, `${count} messages on the page`);
  assert.deepEqual(await received(page), Array.from({ length: count }, (_, i) => i + 1),
    'every numbered message exactly once, in order');
}

test('the demo page connects over WebSocket and shows what a backend publishes', async () => {
  const page = await openPage();
  try {
    assert.equal(await page.textContent('#state'), 'open');
    assert.equal(await page.textContent('#transport'), 'websocket');
    const { subscribers } = await server.publish('demo.chat', { name: 'backend', text: 'hello page' });
    assert.equal(subscribers, 1);
    await page.waitForSelector('#log li:has-text("backend: hello page")', { timeout: 10000 });
  } finally {
    await page.close();
  }
});

test('the chat works between two pages through client publish', async () => {
  const alice = await openPage('?name=alice');
  const bob = await openPage('?name=bob');
  try {
    await alice.fill('input[name="text"]', 'hi from alice');
    await alice.click('button');
    for (const page of [alice, bob]) {
      await page.waitForSelector('#log li:has-text("alice: hi from alice")', { timeout: 10000 });
    }
    await bob.fill('input[name="text"]', 'hello alice');
    await bob.press('input[name="text"]', 'Enter');
    await alice.waitForSelector('#log li:has-text("bob: hello alice")', { timeout: 10000 });
    assert.equal(await bob.inputValue('input[name="text"]'), '', 'the box is cleared once published');
  } finally {
    await alice.close();
    await bob.close();
  }
});

test('the page shows who is in the chat: the list from presence, then joins and leaves', async () => {
  const count = (page) => page.textContent('#count');
  const alice = await openPage('?topic=demo.who&name=alice');
  const bob = await openPage('?topic=demo.who&name=bob');
  try {
    await until(async () => (await count(bob)) === '2', 10000, 'bob sees two members');
    await until(async () => (await count(alice)) === '2', 10000, 'alice sees bob join');
    assert.equal(await alice.locator('#members li').count(), 2);
    await alice.waitForSelector('#log li.note:has-text("joined")', { timeout: 10000 });
    const members = await bob.evaluate(() => [...window.members.keys()].sort());
    assert.deepEqual(await alice.evaluate(() => [...window.members.keys()].sort()), members, 'the same two members');
    await bob.close();
    await until(async () => (await count(alice)) === '1', 10000, 'alice sees bob leave');
    await alice.waitForSelector('#log li.note:has-text("left")', { timeout: 10000 });
  } finally {
    await alice.close();
    if (!bob.isClosed()) await bob.close();
  }
});

test('over SSE the page gets joins and leaves too (join_leave=1), and is a member', async () => {
  const watcher = await openPage('?topic=demo.who-sse&transports=sse');
  let visitor;
  try {
    assert.equal(await watcher.evaluate(() => window.rc.transport), 'sse');
    await watcher.waitForSelector('#presence-note:has-text("WebSocket")', { timeout: 10000 });
    visitor = await openPage('?topic=demo.who-sse');
    await until(async () => (await visitor.textContent('#count')) === '2', 10000, 'the SSE page listed');
    await watcher.waitForSelector('#log li.note:has-text("joined")', { timeout: 10000 });
    assert.equal(await watcher.evaluate(() => window.members.size), 1, 'the visitor, from its join');
    await visitor.close();
    await watcher.waitForSelector('#log li.note:has-text("left")', { timeout: 10000 });
    assert.equal(await watcher.evaluate(() => window.members.size), 0);
  } finally {
    await watcher.close();
    if (visitor && !visitor.isClosed()) await visitor.close();
  }
});

test('after POST /rebalance?fraction=1 the page reconnects by itself and gets every message once, in order', async () => {
  const page = await openPage('?topic=demo.numbers');
  try {
    const sending = numbered(server, 'demo.numbers', 150, 20);
    await until(async () => (await received(page)).length >= 30, 10000, 'the first messages');
    await server.post('/rebalance?fraction=1&period=10ms');
    await sending;
    await expectAll(page, 150);
    const states = await page.evaluate(() => window.states);
    assert.ok(states.includes('reconnecting'), `the connection was lost: ${states}`);
    assert.equal(states.at(-1), 'open');
  } finally {
    await page.close();
  }
});

test('behind an nginx without the Upgrade map the page falls back to SSE, gets every message, and resumes after a 1001', async () => {
  const nginx = await startNginx(server.base.slice('http://'.length));
  // The page itself comes through nginx, so every request of it does.
  const page = await openPage('?topic=demo.sse', nginx.base);
  try {
    assert.equal(await page.evaluate(() => window.rc.transport), 'sse');
    assert.equal(await page.textContent('#transport'), 'sse');
    const sending = numbered(server, 'demo.sse', 120, 20);
    await until(async () => (await received(page)).length >= 30, 10000, 'the first messages');
    await server.post('/rebalance?fraction=1&period=10ms');
    await sending;
    await expectAll(page, 120);
    const states = await page.evaluate(() => window.states);
    assert.ok(states.includes('reconnecting'), `the stream was closed: ${states}`);
  } finally {
    await page.close();
    await nginx.stop();
  }
});

test('with SSE blocked at nginx too the page falls back to long-poll and gets every message once, in order', async () => {
  const nginx = await startNginx(server.base.slice('http://'.length), { blockSse: true });
  const page = await openPage('?topic=demo.poll', nginx.base);
  try {
    assert.equal(await page.evaluate(() => window.rc.transport), 'poll');
    await numbered(server, 'demo.poll', 100, 20);
    await expectAll(page, 100);
  } finally {
    await page.close();
    await nginx.stop();
  }
});

test('with the upgrade refused by the server itself (404) the page falls back too', async () => {
  const page = await openPage('?topic=demo.refused&websocket_path=/refused&sse_path=/refused');
  try {
    assert.equal(await page.evaluate(() => window.rc.transport), 'poll');
    await numbered(server, 'demo.refused', 30, 20);
    await expectAll(page, 30);
  } finally {
    await page.close();
  }
});

test('Chromium negotiates permessage-deflate and reads compressed publishes intact', async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${server.base}/`);
    const url = `${server.base.replace('http', 'ws')}/ws?topic=deflate.page`;
    await page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      window.deflate = { ws, got: [] };
      ws.onmessage = (e) => window.deflate.got.push(e.data);
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error('the WebSocket failed'));
    }), url);
    // The page's own view of the handshake (RFC 7692 §5): the server agreed.
    const extensions = await page.evaluate(() => window.deflate.ws.extensions);
    assert.match(extensions, /^permessage-deflate; server_no_context_takeover/);
    // About 2 KiB of JSON: over --compression-min-size, so it goes compressed
    // (RSV1 on the wire is asserted by tests/python/deflate_client.py).
    const quotes = Array.from({ length: 40 }, (_, i) => ({ id: i, symbol: 'BTC-USD', price: 60000 + i }));
    const { subscribers } = await server.publish('deflate.page', { quotes });
    assert.equal(subscribers, 1);
    await page.waitForFunction(() => window.deflate.got.length === 1, null, { timeout: 10000 });
    assert.deepEqual(JSON.parse(await page.evaluate(() => window.deflate.got[0])), { quotes });
  } finally {
    await page.close();
  }
});
