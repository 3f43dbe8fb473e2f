// The demo page in headless Debian Chromium behind a real nginx (with the
// Upgrade map) over two ringcast nodes on a real redis-server (--broker):
// while a publisher sends numbered messages every 20 ms, each node in
// turn is drained and restarted on its ports. The page reconnects by
// itself, through nginx to whichever node is up, and recovers from the
// Redis stream: every message exactly once, in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { launchChromium } from './chromium.js';
import { startServer, until, freePort, listening, withTimeout } from './server.js';
import { startNginx } from './nginx.js';

const COUNT = 150;
let browser;
let redis;

before(async () => {
  browser = await launchChromium();
  const port = await freePort();
  redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
    '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  redis.port = port;
  await until(() => listening(port), 10000, `redis-server on ${port}`);
});

after(async () => {
  await browser?.close();
  if (redis && redis.exitCode === null) {
    redis.kill('SIGKILL');
    await once(redis, 'exit');
  }
});

/** A node on fixed ports (so nginx finds it again after a restart). */
function node(ports) {
  return startServer(['--demo', '--listen', `127.0.0.1:${ports.ws}`,
    '--api-listen', `127.0.0.1:${ports.api}`, '--broker', `redis://127.0.0.1:${redis.port}`]);
}

test('behind nginx over two nodes on Redis, the page survives a drain and restart of each node with every message once, in order', async () => {
  const ports = [];
  for (let i = 0; i < 2; i++) ports.push({ ws: await freePort(), api: await freePort() });
  const nodes = [await node(ports[0]), await node(ports[1])];
  const nginx = await startNginx(ports.map((p) => `127.0.0.1:${p.ws}`), { websocket: true });
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  try {
    await page.goto(`${nginx.base}/?topic=demo.cluster`);
    await page.evaluate(() => {
      window.states = [];
      window.rc.on('state', (s) => window.states.push(s));
    });
    await page.waitForFunction(() => window.rc.state === 'open' && window.rc.positions().size === 1,
      null, { timeout: 15000 });
    assert.equal(await page.evaluate(() => window.rc.transport), 'websocket');
    // One publish per number: a node that refuses it (draining, down) is
    // skipped for the other; a 200 means it is in the Redis stream.
    let accepted = 0;
    const sending = (async () => {
      for (let n = 1; n <= COUNT; n++) {
        for (let attempt = 0; ; attempt++) {
          const target = nodes[(n + attempt) % 2];
          try {
            const r = await fetch(`${target.api}/publish?topic=demo.cluster`, {
              method: 'POST', body: JSON.stringify({ n }), headers: { 'Content-Type': 'application/json' },
            });
            if (r.ok) break;
          } catch { /* that node is down: try the other */ }
          assert.ok(attempt < 200, `message ${n} was never accepted`);
          await new Promise((r) => setTimeout(r, 20));
        }
        accepted++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const received = () => page.evaluate(() => window.received.map((r) => r.data.n));
    for (const i of [0, 1]) {
      const before = (await received()).length;
      await until(async () => (await received()).length >= before + 20, 15000, 'messages flowing');
      // Drain node i: its clients get 1001, then it exits; start it again.
      await nodes[i].post('/drain?period=200ms');
      await withTimeout(once(nodes[i].child, 'exit'), 15000, `node ${i} exits after its drain`);
      nodes[i] = await node(ports[i]);
    }
    await sending;
    assert.equal(accepted, COUNT);
    await until(async () => (await received()).length >= COUNT, 20000, `${COUNT} messages on the page`);
    assert.deepEqual(await received(), Array.from({ length: COUNT }, (_, i) => i + 1),
      'every numbered message exactly once, in order');
    const states = await page.evaluate(() => window.states);
    assert.ok(states.includes('reconnecting'), `the connection was moved: ${states}`);
    assert.equal(states.at(-1), 'open');
  } finally {
    await page.close();
    await nginx.stop();
    for (const n of nodes) await n.stop();
  }
});
