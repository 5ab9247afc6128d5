// The public listener serves the web demo's page and the files it loads, nothing else of the web
// root (its package files, the rest of node_modules).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { startChatd, httpGet } from './helpers.mjs';

const WEB_ROOT = new URL('../../web-demo/', import.meta.url).pathname;

test('the web demo: its page and the files it loads are served, nothing else of the web root', async (t) => {
  assert.ok(existsSync(`${WEB_ROOT}node_modules/centrifuge/package.json`), 'web-demo needs npm ci');
  const srv = await startChatd(t, { demo: true, env: { CHAT_WEB_ROOT: WEB_ROOT } });
  const served = {
    '/': /text\/html/,
    '/index.html': /text\/html/,
    '/app.js': /javascript/,
    '/style.css': /text\/css/,
    '/node_modules/centrifuge/dist/centrifuge.js': /javascript/,
    '/node_modules/centrifuge/dist/centrifuge.js.map': /json/,
  };
  for (const [path, type] of Object.entries(served)) {
    const r = await httpGet(`${srv.httpUrl}${path}`);
    assert.equal(r.status, 200, path);
    assert.match(r.headers.get('content-type'), type, path);
    assert.ok(r.body.length > 0, path);
    assert.match(r.headers.get('set-cookie') || '', /chat_node=/, path);
  }
  const page = await httpGet(`${srv.httpUrl}/`);
  assert.match(page.body, /<html/i);
  const app = await httpGet(`${srv.httpUrl}/app.js?v=2`);
  assert.equal(app.status, 200, 'a query string does not change the file');

  for (const path of [
    '/package.json',
    '/package-lock.json',
    '/node_modules/',
    '/node_modules/centrifuge/package.json',
    '/node_modules/centrifuge/dist/centrifuge.protobuf.js',
    '/node_modules/.package-lock.json',
    '/index.html/',
    '/../web-demo/package.json',
    '/%2e%2e/web-demo/package.json',
    '/web-demo/package.json',
  ]) {
    const r = await httpGet(`${srv.httpUrl}${path}`);
    assert.equal(r.status, 404, `${path} answered ${r.status}`);
    assert.doesNotMatch(r.body, /"dependencies"|"name"/, path);
  }
});
