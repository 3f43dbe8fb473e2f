// Debian's nginx in front of a ringcast server, as a proxy that breaks
// WebSocket: the config has no Upgrade map, so an upgrade reaches ringcast
// without `Upgrade` and is refused (400). With `blockSse`, /sse is refused
// too (403), as some intermediaries do with long-lived responses.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until } from './server.js';

async function freePort() {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

function listening(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('connect', () => { socket.destroy(); resolve(true); });
    socket.on('error', () => resolve(false));
  });
}

/** Starts nginx proxying to `upstream` (host:port); returns {base, stop}. */
export async function startNginx(upstream, { blockSse = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ringcast-nginx-'));
  const port = await freePort();
  writeFileSync(join(dir, 'nginx.conf'), `
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:${port};
    ${blockSse ? 'location /sse { return 403; }' : ''}
    # No "proxy_set_header Upgrade": WebSocket cannot pass.
    location / {
      proxy_pass http://${upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 75s;
    }
  }
}
`);
  const nginx = spawn(process.env.RINGCAST_NGINX || '/usr/sbin/nginx', [
    '-p', dir, '-c', join(dir, 'nginx.conf'),
    '-g', `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;`,
  ], { stdio: 'ignore' });
  await until(() => listening(port), 10000, `nginx on ${port}`);
  return {
    base: `http://127.0.0.1:${port}`,
    async stop() {
      if (nginx.exitCode !== null) return;
      nginx.kill('SIGTERM');
      await once(nginx, 'exit');
    },
  };
}
