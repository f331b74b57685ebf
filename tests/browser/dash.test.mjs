// The dashboard at / (issue 13) in a real browser: Debian's chromium driven by playwright-core
// (pinned in package.json to the release built for that chromium), run by node:test. It starts
// the real stockd ($STOCKD_BIN, else build/stockd) on a loopback port with a fresh data
// directory and its generated admin token, and checks that every panel renders with data, that
// a purchase made through the API reaches the Inventory and Orders panels live, that a load
// test started from the page shows its result, that a chaos toggle changes what the API does,
// and that a phone-width screen has no horizontal overflow. Any console error or uncaught
// exception of the page fails the test. A screenshot of each panel goes to
// $STOCKD_BROWSER_ARTIFACTS (else tests/browser/artifacts).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.STOCKD_CHROMIUM || '/usr/bin/chromium';
const STOCKD = process.env.STOCKD_BIN || path.join(here, '..', '..', 'build', 'stockd');
const ARTIFACTS = process.env.STOCKD_BROWSER_ARTIFACTS || path.join(here, 'artifacts');
const START_TIMEOUT_MS = 30000;
// The promise: a committed purchase is on the page within a second (the stream pushes
// it; nothing polls). The only timing here, and a wait, not a measurement.
const LIVE_WAIT_MS = 1000;
const UI_WAIT_MS = 15000; // what the page fetches at start, an API answer
const LOAD_TEST_WAIT_MS = 120000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

let server = null; // {proc, port, token, dir}
let browser = null;

// playwright-core 1.64 refuses Node.js before 20 (it exits at import): say so as a failure of
// our own rather than a bare exit. Debian 12's nodejs is 18.
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
const NODE_MIN = 20;
const { chromium } = NODE_MAJOR >= NODE_MIN ? await import('playwright-core') : { chromium: null };

test('node.js is new enough for playwright-core', () => {
  assert.ok(NODE_MAJOR >= NODE_MIN, 'node ' + process.version + ' is too old: playwright-core '
    + '(tests/browser/package.json) needs Node.js ' + NODE_MIN + ' or newer');
});

// ---- stockd ----

function startStockd() {
  const dir = mkdtempSync(path.join(tmpdir(), 'stockd-browser-'));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'STOCKD_TOKENS'));
  const proc = spawn(STOCKD, ['--listen', '127.0.0.1:0', '--data-dir', dir, '--threads', '2'],
    { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (chunk) => { stderr += chunk; });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('stockd did not listen; stderr:\n' + stderr)),
      START_TIMEOUT_MS);
    proc.on('exit', (code) => reject(new Error('stockd exited (' + code + '); stderr:\n' + stderr)));
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/^stockd listening on http:\/\/127\.0\.0\.1:(\d+) /);
      if (!m) return;
      clearTimeout(timer);
      const token = readFileSync(path.join(dir, 'admin.token'), 'utf8').trim();
      resolve({ proc, port: Number(m[1]), token, dir, stderr: () => stderr });
    });
  });
}

function url(p) {
  return 'http://127.0.0.1:' + server.port + p;
}

let keys = 0;
async function call(method, p, body, token = server.token) {
  const headers = { Authorization: 'Bearer ' + token };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    headers['Idempotency-Key'] = 'browser-test-' + process.pid + '-' + ++keys;
  }
  const res = await fetch(url(p), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

async function must(status, method, p, body) {
  const r = await call(method, p, body);
  assert.equal(r.status, status, method + ' ' + p + ': ' + JSON.stringify(r.json));
  return r.json;
}

// ---- the browser ----

function chromiumMajor() {
  const text = execFileSync(CHROMIUM, ['--version'], { encoding: 'utf8' });
  const m = text.match(/(\d+)\.\d+\.\d+\.\d+/);
  assert.ok(m, 'no version in `' + CHROMIUM + ' --version`: ' + text);
  return { major: Number(m[1]), text: text.trim() };
}

function pinnedChromium() {
  const require = createRequire(import.meta.url);
  const pkg = require.resolve('playwright-core/package.json');
  const browsers = JSON.parse(readFileSync(path.join(path.dirname(pkg), 'browsers.json'), 'utf8'));
  const version = browsers.browsers.find((b) => b.name === 'chromium').browserVersion;
  return { version, major: Number(version.split('.')[0]), playwright: require(pkg).version };
}

// A page of a new context, with its console errors and uncaught exceptions collected.
async function openPage(viewport, token) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push('console: ' + msg.text() + ' ' + JSON.stringify(msg.location()));
  });
  page.on('pageerror', (e) => errors.push('exception: ' + e.message));
  await page.goto(url('/'));
  if (token) {
    await page.fill('#token-input', token);
    await page.click('#token-form button');
    await page.waitForSelector('#token-set', { state: 'visible', timeout: UI_WAIT_MS });
  }
  return { context, page, errors };
}

async function screenshot(page, name) {
  await page.locator('#panel-' + name).screenshot({ path: path.join(ARTIFACTS, 'panel-' + name + '.png') });
}

function text(page, selector) {
  return page.locator(selector).first().textContent();
}

// The Inventory panel's row of sku in store (a locator).
function itemRow(page, sku, store) {
  return page.locator('#inventory tbody tr[data-sku="' + sku + '"][data-store="' + store + '"]');
}

// ---- setup ----

before(async () => {
  assert.ok(chromium !== null, 'no playwright-core: node ' + process.version + ' is too old');
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startStockd();
  await must(201, 'POST', '/v1/stores', { storeId: 'S2', name: 'Store 2' });
  await must(201, 'POST', '/v1/products', { sku: 'SKU-A', name: 'A', storeId: 'S1', initialOnHand: 100 });
  await must(201, 'POST', '/v1/products', { sku: 'SKU-B', name: 'B', storeId: 'S2', initialOnHand: 40 });
  await must(201, 'POST', '/v1/products', { sku: 'LOAD', name: 'load', storeId: 'S1', initialOnHand: 100000 });
  await must(201, 'POST', '/v1/purchase', { sku: 'SKU-A', qty: 2, customerId: 'c-first' });
  await must(201, 'POST', '/v1/orders', { customerId: 'c-order', lines: [{ sku: 'SKU-B', qty: 1 }] });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    const exited = new Promise((resolve) => server.proc.on('exit', (code, sig) => resolve({ code, sig })));
    server.proc.kill('SIGTERM');
    const { code, sig } = await exited;
    rmSync(server.dir, { recursive: true, force: true });
    // A clean stop (under the sanitizers: no leak, no error report either).
    assert.equal(code, 0, 'stockd stopped with ' + (sig || code) + '; stderr:\n' + server.stderr().slice(-4000));
  }
});

// ---- tests ----

test('chromium is the version playwright-core is pinned to', () => {
  const have = chromiumMajor();
  const pin = pinnedChromium();
  assert.equal(have.major, pin.major,
    'DRIFT: ' + CHROMIUM + ' is "' + have.text + '" but playwright-core ' + pin.playwright
    + ' (tests/browser/package.json) is built for Chromium ' + pin.version + '; pin the '
    + 'playwright-core release built for Chromium ' + have.major + ' and run `npm install` '
    + 'in tests/browser to update package-lock.json');
});

test('without a token the page shows what the public routes show', async () => {
  const { context, page, errors } = await openPage(DESKTOP, null);
  await page.waitForFunction(() => /^\d/.test(document.querySelector('#metric-queue .value').textContent),
    null, { timeout: UI_WAIT_MS });
  await page.waitForFunction(() => /health: ok/.test(document.querySelector('#health').textContent),
    null, { timeout: UI_WAIT_MS });
  assert.ok(await page.locator('#panel-inventory .needs-token').isVisible(), 'inventory asks for a token');
  assert.ok(await page.locator('#panel-chaos .needs-token').isVisible(), 'chaos asks for a token');
  assert.ok(!(await page.locator('#inventory').isVisible()), 'no inventory without a token');
  await page.screenshot({ path: path.join(ARTIFACTS, 'no-token.png'), fullPage: true });
  await context.close();
  assert.deepEqual(errors, []);
});

test('the dashboard with an admin token', async (t) => {
  const { context, page, errors } = await openPage(DESKTOP, server.token);

  await t.test('every panel renders with data', async () => {
    await itemRow(page, 'SKU-A', 'S1').waitFor({ timeout: UI_WAIT_MS });
    assert.equal(await text(page, '#inventory tbody tr[data-sku="SKU-A"] [data-col="onHand"]'), '98');
    // SKU-B: 40, and one sold by the checkout order of before(), paid by now or soon.
    await page.waitForFunction(() => document.querySelector(
      '#inventory tbody tr[data-sku="SKU-B"][data-store="S2"] [data-col="available"]').textContent === '39',
    null, { timeout: UI_WAIT_MS });
    // before()'s purchase and checkout order.
    await page.locator('#orders tbody tr').nth(1).waitFor({ timeout: UI_WAIT_MS });
    assert.deepEqual(await page.locator('#orders tbody [data-col="status"]').allTextContents(),
      ['PAID', 'COMPLETED']);
    await page.waitForFunction(() => document.querySelector('#stream-state').textContent === 'live',
      null, { timeout: UI_WAIT_MS });
    await page.locator('#workers tbody tr[data-stage="payment"]').waitFor({ timeout: UI_WAIT_MS });
    // Two scrapes: the rates need a previous one.
    await page.waitForFunction(() => /^\d/.test(document.querySelector('#metric-purchases .value').textContent),
      null, { timeout: UI_WAIT_MS });
    for (const id of ['queue', 'projection', 'dlt']) {
      assert.match(await text(page, '#metric-' + id + ' .value'), /^\d/, 'metric ' + id);
    }
    const p50 = await text(page, '#metric-p50 .value');
    assert.match(p50, /^(n\/a|–|\d+(\.\d+)? ms)$/, 'p50 latency: a figure, or n/a without the histogram');
    assert.equal(await text(page, '#metric-circuit .value'), 'closed');
    assert.equal(await text(page, '#metric-relay .value'), 'n/a', 'no relay without --amqp');
  });

  await t.test('a purchase through the API reaches Inventory and Orders live', async () => {
    const onHand = page.locator('#inventory tbody tr[data-sku="SKU-A"][data-store="S1"] [data-col="onHand"]');
    assert.equal(await onHand.textContent(), '98');
    const sold = await must(201, 'POST', '/v1/purchase', { sku: 'SKU-A', qty: 3, customerId: 'c-live' });
    await page.waitForFunction((want) => document.querySelector(
      '#inventory tbody tr[data-sku="SKU-A"][data-store="S1"] [data-col="onHand"]').textContent === want,
    '95', { timeout: LIVE_WAIT_MS });
    await page.locator('#orders tbody tr[data-order="' + sold.orderId + '"]').waitFor({ timeout: LIVE_WAIT_MS });
    assert.equal(await text(page, '#orders tbody tr[data-order="' + sold.orderId + '"] [data-col="status"]'),
      'COMPLETED');
  });

  await t.test('a checkout order placed from the page moves to PAID, its history on click', async () => {
    await page.selectOption('#order-form select[name="kind"]', 'order');
    await page.fill('#order-form input[name="sku"]', 'SKU-B');
    await page.fill('#order-form input[name="qty"]', '2');
    await page.click('#order-form button');
    await page.waitForFunction(() => /^ord_\d+ PENDING$/.test(document.querySelector('#order-msg').textContent),
      null, { timeout: UI_WAIT_MS });
    const orderId = (await text(page, '#order-msg')).split(' ')[0];
    const status = page.locator('#orders tbody tr[data-order="' + orderId + '"] [data-col="status"]');
    await page.waitForFunction((id) => {
      const el = document.querySelector('#orders tbody tr[data-order="' + id + '"] [data-col="status"]');
      return el !== null && el.textContent === 'PAID';
    }, orderId, { timeout: UI_WAIT_MS });
    assert.equal(await status.textContent(), 'PAID');
    await page.click('#orders tbody tr[data-order="' + orderId + '"]');
    await page.locator('#order-history li').nth(2).waitFor({ timeout: UI_WAIT_MS });
    const history = await page.locator('#order-history li').allTextContents();
    assert.deepEqual(history.map((h) => h.split(' ')[0]), ['PENDING', 'CONFIRMED', 'PAID']);
    const order = await must(200, 'GET', '/v1/orders/' + orderId);
    assert.equal(order.lines[0].qty, 2);
  });

  await t.test('the adjust and set-absolute forms change the stock', async () => {
    await page.selectOption('#adjust-form select[name="storeId"]', 'S2');
    await page.fill('#adjust-form input[name="sku"]', 'SKU-B');
    await page.fill('#adjust-form input[name="delta"]', '10');
    const item = async () => (await must(200, 'GET', '/v1/items/SKU-B/availability')).stores[0].onHand;
    const before = await item();
    await page.click('#adjust-form button');
    await page.waitForFunction(() => /^adjusted/.test(document.querySelector('#inventory-msg').textContent),
      null, { timeout: UI_WAIT_MS });
    assert.equal(await item(), before + 10);
    await page.selectOption('#set-form select[name="storeId"]', 'S2');
    await page.fill('#set-form input[name="sku"]', 'SKU-B');
    await page.fill('#set-form input[name="onHand"]', '70');
    await page.click('#set-form button');
    await page.waitForFunction(() => /^set /.test(document.querySelector('#inventory-msg').textContent),
      null, { timeout: UI_WAIT_MS });
    assert.equal(await item(), 70);
    await page.waitForFunction(() => document.querySelector(
      '#inventory tbody tr[data-sku="SKU-B"][data-store="S2"] [data-col="onHand"]').textContent === '70',
    null, { timeout: UI_WAIT_MS });
  });

  await t.test('a load test started from the page shows its result', async () => {
    await page.fill('#load-form input[name="vus"]', '4');
    await page.fill('#load-form input[name="iterations"]', '300');
    await page.fill('#load-form input[name="sku"]', 'LOAD');
    await page.selectOption('#load-form select[name="kind"]', 'purchase');
    await page.click('#load-form button');
    await page.locator('#load-verdict').waitFor({ timeout: LOAD_TEST_WAIT_MS });
    assert.match(await text(page, '#load-verdict'), /^ok: /);
    assert.match(await text(page, '#load-throughput'), /^\d+(\.\d)? req\/s$/);
    assert.match(await text(page, '#load-result'), /201: 300/);
    assert.equal(await text(page, '#load-status'), 'done');
    const left = (await must(200, 'GET', '/v1/items/LOAD/availability')).total.onHand;
    assert.equal(left, 100000 - 300);
    // The stream brings the load test's sales to the Inventory panel too.
    await page.waitForFunction(() => document.querySelector(
      '#inventory tbody tr[data-sku="LOAD"][data-store="S1"] [data-col="onHand"]').textContent === '99700',
    null, { timeout: UI_WAIT_MS });
    // And /metrics its purchases: the chart has had a non-zero rate.
    await page.waitForFunction(() => /^\d/.test(document.querySelector('#metric-purchases .value').textContent),
      null, { timeout: UI_WAIT_MS });
  });

  await t.test('the chaos toggles change what the API does', async () => {
    await page.click('#readonly-toggle');
    await page.waitForFunction(() => /^on/.test(document.querySelector('#readonly-state').textContent),
      null, { timeout: UI_WAIT_MS });
    const refused = await call('POST', '/v1/purchase', { sku: 'SKU-A', qty: 1, customerId: 'c-ro' });
    assert.equal(refused.status, 503);
    assert.equal(refused.json.code, 'read_only');
    assert.ok(await page.locator('#readonly-badge').isVisible(), 'the header says read-only');
    await page.screenshot({ path: path.join(ARTIFACTS, 'read-only.png'), fullPage: true });
    await page.click('#readonly-toggle');
    await page.waitForFunction(() => document.querySelector('#readonly-state').textContent === 'off',
      null, { timeout: UI_WAIT_MS });
    await must(201, 'POST', '/v1/purchase', { sku: 'SKU-A', qty: 1, customerId: 'c-rw' });

    const stage = (s) => '#workers tbody tr[data-stage="' + s + '"]';
    await page.click(stage('payment') + ' button');
    await page.waitForFunction((sel) => document.querySelector(sel).textContent === 'paused',
      stage('payment') + ' [data-col="state"]', { timeout: UI_WAIT_MS });
    const workers = await must(200, 'GET', '/v1/admin/workers');
    assert.equal(workers.workers.find((w) => w.stage === 'payment').state, 'paused');
    await page.click(stage('payment') + ' button');
    await page.waitForFunction((sel) => document.querySelector(sel).textContent === 'running',
      stage('payment') + ' [data-col="state"]', { timeout: UI_WAIT_MS });

    await page.fill('#payment-form input[name="failureRate"]', '1');
    await page.click('#payment-form button');
    await page.waitForFunction(() => /failure rate 1,/.test(document.querySelector('#chaos-msg').textContent),
      null, { timeout: UI_WAIT_MS });
    const failed = await must(201, 'POST', '/v1/orders', { customerId: 'c-fail', lines: [{ sku: 'SKU-A', qty: 1 }] });
    await page.waitForFunction((id) => {
      const el = document.querySelector('#orders tbody tr[data-order="' + id + '"] [data-col="status"]');
      return el !== null && el.textContent === 'PAYMENT_FAILED';
    }, failed.orderId, { timeout: UI_WAIT_MS });
    await page.fill('#payment-form input[name="failureRate"]', '0');
    await page.click('#payment-form button');
    await page.waitForFunction(() => /failure rate 0,/.test(document.querySelector('#chaos-msg').textContent),
      null, { timeout: UI_WAIT_MS });
  });

  await t.test('a screenshot of each panel', async () => {
    for (const name of ['inventory', 'orders', 'load', 'metrics', 'chaos']) await screenshot(page, name);
    await page.screenshot({ path: path.join(ARTIFACTS, 'desktop.png'), fullPage: true });
  });

  await t.test('the token is asked once per tab session, and forgotten on request', async () => {
    await page.reload();
    await itemRow(page, 'SKU-A', 'S1').waitFor({ timeout: UI_WAIT_MS });
    assert.ok(await page.locator('#token-set').isVisible(), 'the token survives a reload');
    assert.ok(!(await page.locator('#token-form').isVisible()), 'no second question');
    await page.click('#token-forget');
    await page.locator('#token-form').waitFor({ timeout: UI_WAIT_MS });
    assert.ok(!(await page.locator('#inventory').isVisible()), 'no inventory once forgotten');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('stockd.token')), null);
  });

  await context.close();
  assert.deepEqual(errors, [], 'console errors or exceptions of the page');
});

test('a phone-width screen has no horizontal overflow', async () => {
  const { context, page, errors } = await openPage(PHONE, server.token);
  await itemRow(page, 'SKU-A', 'S1').waitFor({ timeout: UI_WAIT_MS });
  await page.locator('#workers tbody tr').first().waitFor({ timeout: UI_WAIT_MS });
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
  }));
  assert.ok(widths.scroll <= widths.client, 'page wider than the screen: ' + JSON.stringify(widths));
  await page.screenshot({ path: path.join(ARTIFACTS, 'phone.png'), fullPage: true });
  await context.close();
  assert.deepEqual(errors, []);
});

test('latency comes from the per-route histogram when /metrics has one', async () => {
  // /metrics as stockd serves it, with its stockd_http_request_duration_seconds replaced by
  // one that grows by 100 answers a scrape: 50 within 1 ms, 40 within 5 ms, 10 within 10 ms;
  // and a stream route's long ones, which the quantiles leave out.
  const context = await browser.newContext({ viewport: DESKTOP });
  let scrapes = 0;
  await context.route('**/metrics', async (route) => {
    const res = await route.fetch();
    const n = 100 * ++scrapes;
    const h = 'stockd_http_request_duration_seconds';
    const lines = [
      '# TYPE ' + h + ' histogram',
      h + '_bucket{route="/v1/purchase",le="0.001"} ' + n / 2,
      h + '_bucket{route="/v1/purchase",le="0.005"} ' + (n * 9) / 10,
      h + '_bucket{route="/v1/purchase",le="0.01"} ' + n,
      h + '_bucket{route="/v1/purchase",le="+Inf"} ' + n,
      h + '_sum{route="/v1/purchase"} ' + n * 0.002,
      h + '_count{route="/v1/purchase"} ' + n,
      h + '_bucket{route="/v1/stream",le="0.01"} 0',
      h + '_bucket{route="/v1/stream",le="+Inf"} ' + n,
      h + '_sum{route="/v1/stream"} ' + n * 60,
      h + '_count{route="/v1/stream"} ' + n,
    ];
    // stockd's own family of that name goes: the page reads the one above only.
    const own = (await res.text()).split('\n').filter((l) => !l.includes(h)).join('\n');
    await route.fulfill({ response: res, body: own + '\n' + lines.join('\n') + '\n' });
  });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url('/'));
  await page.waitForFunction(() => document.querySelector('#metric-p99 .value').textContent !== 'n/a'
    && /ms$/.test(document.querySelector('#metric-p99 .value').textContent), null, { timeout: UI_WAIT_MS });
  assert.equal(await text(page, '#metric-p50 .value'), '1 ms');
  assert.equal(await text(page, '#metric-p99 .value'), '9.50 ms');
  await context.close();
  assert.deepEqual(errors, []);
});
