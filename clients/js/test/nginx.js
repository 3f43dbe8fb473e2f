// Debian's nginx in front of ringcast servers. By default it is a proxy
// that breaks WebSocket: the config has no Upgrade map, so an upgrade
// reaches ringcast without `Upgrade` and is refused (400). With
// `blockSse`, /sse is refused too (403), as some intermediaries do with
// long-lived responses. With `websocket`, it passes upgrades as
// deploy/nginx.conf does.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until, freePort, listening } from './server.js';

/** Starts nginx proxying to `upstream` (host:port, or several: a request
 * goes to the next one when a node refuses it); returns {base, stop}. */
export async function startNginx(upstream, { blockSse = false, websocket = false } = {}) {
  const servers = [upstream].flat().map((u) => `server ${u} max_fails=0;`).join(' ');
  const dir = mkdtempSync(join(tmpdir(), 'ringcast-nginx-'));
  const port = await freePort();
  writeFileSync(join(dir, 'nginx.conf'), `
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  upstream ringcast { ${servers} }
  server {
    listen 127.0.0.1:${port};
    ${blockSse ? 'location /sse { return 403; }' : ''}
    location / {
      proxy_pass http://ringcast;
      proxy_http_version 1.1;
      ${websocket
    ? 'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;'
    : '# No "proxy_set_header Upgrade": WebSocket cannot pass.\n      proxy_set_header Connection "";'}
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
