// The dashboard at / (issue 13): Inventory, Orders, Load test, Metrics and Chaos panels over
// stockd's own API. Compiled into stockd with web/index.html and web/dash.css
// (src/http/api_dash.c); it loads nothing else. The bearer token is asked once and kept in
// sessionStorage; without one only the public routes (/health, /metrics) are called.
'use strict';

(() => {
  const TOKEN_KEY = 'stockd.token';
  const METRICS_POLL_MS = 1000;
  const ADMIN_POLL_MS = 2000;
  const HEALTH_POLL_MS = 2000;
  const HISTORY_POINTS = 60; // one minute of metrics
  const ORDERS_SHOWN = 25;
  const ORDERS_KEPT = 400; // in memory, pruned to half when passed
  const ITEMS_SHOWN = 200;
  const INVENTORY_SKUS_MAX = 50; // products loaded at start (the stream adds the others)
  const RECENT_EVENTS = 1000; // events read back at start for the recent orders
  const RENDER_DELAY_MS = 100; // stream events are rendered in batches
  const STREAM_RETRY_MS = 1000;

  const $ = (selector) => document.querySelector(selector);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    stores: [],
    items: new Map(), // "store\u0000sku" -> {storeId, sku, onHand, reserved, version, changed}
    orders: new Map(), // orderId -> {orderId, kind, status, customerId, lines, at, seq}
    stream: null, // the AbortController of the open stream
    adminDenied: false,
    readOnly: false,
    renderTimer: 0,
    loadRunning: false,
  };

  // ---- HTTP ----

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    return headers;
  }

  // An Idempotency-Key: crypto.randomUUID needs a secure context, getRandomValues does not.
  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return 'dash-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // Calls the API; resolves {status, json, text} whatever the status (network errors too:
  // status 0).
  async function api(method, path, body, command) {
    const extra = {};
    if (body !== undefined) extra['Content-Type'] = 'application/json';
    if (command) extra['Idempotency-Key'] = newKey();
    try {
      const res = await fetch(path, {
        method,
        headers: authHeaders(extra),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      let json = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch (e) {
        json = null;
      }
      return { status: res.status, json, text };
    } catch (e) {
      return { status: 0, json: null, text: String(e) };
    }
  }

  // "409 insufficient_stock: ..." from a problem+json answer.
  function problemText(r) {
    if (r.status === 0) return 'no answer: ' + r.text;
    if (r.json && r.json.code) {
      return r.status + ' ' + r.json.code + (r.json.detail ? ': ' + r.json.detail : '');
    }
    return 'HTTP ' + r.status;
  }

  function say(selector, text, isError) {
    const el = $(selector);
    el.textContent = text;
    el.classList.toggle('error', !!isError);
  }

  // Reads a text/event-stream body, calling onEvent(type, data, id) per event.
  async function readEvents(res, onEvent) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let type = 'message';
        let id = null;
        const data = [];
        for (const line of block.split('\n')) {
          if (line === '' || line[0] === ':') continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value2 = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') type = value2;
          else if (field === 'data') data.push(value2);
          else if (field === 'id') id = value2;
        }
        if (data.length > 0) onEvent(type, data.join('\n'), id);
      }
    }
  }

  // ---- token ----

  function showToken() {
    document.body.classList.toggle('has-token', !!state.token);
    $('#token-form').hidden = !!state.token;
    $('#token-set').hidden = !state.token;
  }

  async function useToken(token) {
    state.token = token;
    const r = await api('GET', '/v1/stores');
    if (r.status === 401) {
      state.token = '';
      say('#token-msg', 'this token is not known', true);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    say('#token-msg', '');
    startWithToken();
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    if (state.stream) state.stream.abort();
    state.stream = null;
    state.items.clear();
    state.orders.clear();
    state.adminDenied = false;
    showToken();
  }

  // ---- inventory and orders: a snapshot, then the stream ----

  function itemKey(storeId, sku) {
    return storeId + '\u0000' + sku;
  }

  // Applies a stock figure (an event's data or an availability row) newer than what we have.
  function applyItem(storeId, sku, onHand, reserved, version) {
    const key = itemKey(storeId, sku);
    const old = state.items.get(key);
    if (old && version !== undefined && old.version !== undefined && version <= old.version) {
      return;
    }
    state.items.set(key, { storeId, sku, onHand, reserved, version, changed: Date.now() });
  }

  function orderKind(eventType) {
    return eventType === 'OrderCompleted' ? 'purchase' : 'checkout';
  }

  function linesText(data) {
    if (Array.isArray(data.lines)) return data.lines.map((l) => l.sku + '×' + l.qty).join(' ');
    if (data.sku !== undefined) return data.sku + '×' + data.qty;
    return null;
  }

  // One committed event, from /v1/events or /v1/stream.
  function applyEvent(ev) {
    const d = ev.data || {};
    if (typeof d.onHand === 'number' && typeof d.reserved === 'number' && d.storeId && d.sku) {
      applyItem(d.storeId, d.sku, d.onHand, d.reserved, d.version);
    }
    if (ev.eventType === 'StoreCreated' && d.storeId) {
      if (!state.stores.some((s) => s.storeId === d.storeId)) {
        state.stores.push({ storeId: d.storeId, name: d.name });
        renderStores();
      }
    }
    // A purchase's one event, OrderCompleted, has no status member: it is COMPLETED.
    const status = d.status || (ev.eventType === 'OrderCompleted' ? 'COMPLETED' : null);
    if (ev.eventType.startsWith('Order') && d.orderId && status) {
      const old = state.orders.get(d.orderId);
      if (old && old.seq >= ev.seq) return;
      // Only orders created in sight are kept: a later step of one pruned is not news.
      if (!old && ev.eventType !== 'OrderCreated' && ev.eventType !== 'OrderCompleted') return;
      state.orders.set(d.orderId, {
        orderId: d.orderId,
        kind: old ? old.kind : orderKind(ev.eventType),
        status,
        customerId: d.customerId || (old && old.customerId) || '',
        lines: linesText(d) || (old && old.lines) || '',
        at: ev.occurredAt,
        seq: ev.seq,
        created: old ? old.created : ev.seq,
      });
      if (!old && state.orders.size > ORDERS_KEPT) pruneOrders();
    }
  }

  // Forgets the oldest orders past ORDERS_KEPT (a load test creates thousands).
  function pruneOrders() {
    const oldest = Array.from(state.orders.values()).sort((a, b) => a.created - b.created);
    for (const o of oldest.slice(0, oldest.length - ORDERS_KEPT / 2)) state.orders.delete(o.orderId);
  }

  async function loadSnapshot() {
    const status = await api('GET', '/v1/projections/status');
    if (status.status !== 200) throw new Error('/v1/projections/status: ' + problemText(status));
    const logSeq = status.json.logSeq;
    const stores = await api('GET', '/v1/stores');
    if (stores.status === 200) state.stores = stores.json.items;
    renderStores();
    const totals = await api('GET', '/v1/products/totals?size=' + INVENTORY_SKUS_MAX);
    if (totals.status === 200) {
      for (const p of totals.json.items) {
        const a = await api('GET', '/v1/items/' + encodeURIComponent(p.sku) + '/availability');
        if (a.status !== 200) continue;
        for (const s of a.json.stores) applyItem(s.storeId, p.sku, s.onHand, s.reserved, s.version);
      }
    }
    let since = Math.max(0, logSeq - RECENT_EVENTS);
    while (since < logSeq) {
      const page = await api('GET', '/v1/events?limit=1000&since=' + since);
      if (page.status !== 200 || page.json.items.length === 0) break;
      for (const ev of page.json.items) applyEvent(ev);
      since = page.json.nextSince;
    }
    return logSeq;
  }

  // Follows /v1/stream from seq on (EventSource cannot send a bearer token: fetch reads it).
  async function followStream(controller, seq) {
    let last = seq;
    while (!controller.signal.aborted) {
      try {
        const res = await fetch('/v1/stream?since=' + last, {
          headers: authHeaders({ Accept: 'text/event-stream' }),
          signal: controller.signal,
        });
        if (res.status !== 200) {
          setStreamState('stream ' + res.status, 'bad');
          await res.text();
          if (res.status === 401 || res.status === 403) return;
        } else {
          setStreamState('live', 'ok');
          await readEvents(res, (type, data, id) => {
            const ev = JSON.parse(data);
            applyEvent(ev);
            if (id !== null) last = Number(id);
            scheduleRender();
          });
          setStreamState('reconnecting', 'warn');
        }
      } catch (e) {
        if (controller.signal.aborted) return;
        setStreamState('reconnecting', 'warn');
      }
      await new Promise((resolve) => setTimeout(resolve, STREAM_RETRY_MS));
    }
  }

  function setStreamState(text, kind) {
    const el = $('#stream-state');
    el.textContent = text;
    el.className = 'badge ' + (kind || '');
  }

  async function startWithToken() {
    showToken();
    if (state.stream) state.stream.abort();
    const controller = new AbortController();
    state.stream = controller;
    state.items.clear();
    state.orders.clear();
    try {
      const seq = await loadSnapshot();
      if (controller.signal.aborted) return;
      renderNow();
      followStream(controller, seq);
    } catch (e) {
      setStreamState('error', 'bad');
      say('#inventory-msg', String(e.message || e), true);
    }
    pollAdmin();
  }

  // ---- rendering ----

  function scheduleRender() {
    if (state.renderTimer) return;
    state.renderTimer = setTimeout(() => {
      state.renderTimer = 0;
      renderNow();
    }, RENDER_DELAY_MS);
  }

  function renderNow() {
    renderInventory();
    renderOrders();
  }

  function cell(tr, text, numeric) {
    const td = document.createElement('td');
    td.textContent = text;
    if (numeric) td.className = 'num';
    tr.appendChild(td);
    return td;
  }

  function renderInventory() {
    const rows = Array.from(state.items.values()).sort(
      (a, b) => a.sku.localeCompare(b.sku) || a.storeId.localeCompare(b.storeId)).slice(0, ITEMS_SHOWN);
    const body = $('#inventory tbody');
    const now = Date.now();
    body.replaceChildren(...rows.map((it) => {
      const tr = document.createElement('tr');
      tr.dataset.sku = it.sku;
      tr.dataset.store = it.storeId;
      if (now - it.changed < 1500) tr.className = 'flash';
      cell(tr, it.sku);
      cell(tr, it.storeId);
      cell(tr, it.onHand, true).dataset.col = 'onHand';
      cell(tr, it.reserved, true).dataset.col = 'reserved';
      cell(tr, it.onHand - it.reserved, true).dataset.col = 'available';
      return tr;
    }));
    $('#inventory-empty').hidden = rows.length > 0;
  }

  function renderOrders() {
    const rows = Array.from(state.orders.values())
      .sort((a, b) => b.created - a.created)
      .slice(0, ORDERS_SHOWN);
    const body = $('#orders tbody');
    body.replaceChildren(...rows.map((o) => {
      const tr = document.createElement('tr');
      tr.dataset.order = o.orderId;
      cell(tr, o.orderId);
      cell(tr, o.kind);
      const st = cell(tr, o.status);
      st.dataset.col = 'status';
      cell(tr, o.customerId);
      cell(tr, o.lines);
      cell(tr, (o.at || '').replace('T', ' ').replace(/\.\d+Z$/, 'Z'));
      return tr;
    }));
    $('#orders-empty').hidden = rows.length > 0;
  }

  function renderStores() {
    for (const select of document.querySelectorAll('select.stores')) {
      const chosen = select.value;
      select.replaceChildren(...state.stores.map((s) => {
        const o = document.createElement('option');
        o.value = s.storeId;
        o.textContent = s.storeId;
        return o;
      }));
      if (chosen) select.value = chosen;
    }
  }

  async function showOrder(orderId) {
    const box = $('#order-detail');
    box.hidden = false;
    box.textContent = 'Loading ' + orderId + '…';
    const r = await api('GET', '/v1/orders/' + encodeURIComponent(orderId));
    if (r.status !== 200) {
      box.textContent = orderId + ': ' + problemText(r);
      return;
    }
    const o = r.json;
    box.replaceChildren();
    const title = document.createElement('strong');
    title.textContent = o.orderId + ' ' + o.status + (o.storeId ? ' in ' + o.storeId : '');
    box.appendChild(title);
    const list = document.createElement('ol');
    list.id = 'order-history';
    for (const h of o.history || [{ status: o.status, at: o.createdAt || '' }]) {
      const li = document.createElement('li');
      li.textContent = h.status + ' at ' + h.at;
      list.appendChild(li);
    }
    box.appendChild(list);
  }

  // ---- forms ----

  function formValues(form) {
    return Object.fromEntries(new FormData(form).entries());
  }

  async function submitAdjust(ev) {
    ev.preventDefault();
    const v = formValues(ev.target);
    const r = await api('POST', '/v1/adjustments',
      { storeId: v.storeId, sku: v.sku, delta: Number(v.delta), reason: v.reason }, true);
    say('#inventory-msg', r.status === 201 || r.status === 200
      ? 'adjusted ' + v.sku + ' in ' + v.storeId + ' by ' + v.delta : problemText(r), r.status >= 300);
  }

  async function submitSet(ev) {
    ev.preventDefault();
    const v = formValues(ev.target);
    const r = await api('POST', '/v1/items:set-absolute',
      { storeId: v.storeId, sku: v.sku, onHand: Number(v.onHand), countRef: v.countRef }, true);
    say('#inventory-msg', r.status === 201 || r.status === 200
      ? 'set ' + v.sku + ' in ' + v.storeId + ' to ' + v.onHand : problemText(r), r.status >= 300);
  }

  async function submitOrder(ev) {
    ev.preventDefault();
    const v = formValues(ev.target);
    const qty = Number(v.qty);
    const r = v.kind === 'purchase'
      ? await api('POST', '/v1/purchase', { sku: v.sku, qty, customerId: v.customerId }, true)
      : await api('POST', '/v1/orders',
        { customerId: v.customerId, lines: [{ sku: v.sku, qty }] }, true);
    if (r.status === 201) {
      say('#order-msg', r.json.orderId + ' ' + r.json.status);
    } else {
      say('#order-msg', problemText(r), true);
    }
  }

  // ---- load test ----

  function showLoadResult(res) {
    const box = $('#load-result');
    box.hidden = false;
    box.replaceChildren();
    const dl = document.createElement('dl');
    dl.className = 'result';
    const add = (name, value, cls) => {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = value;
      if (cls) dd.className = cls;
      dl.append(dt, dd);
      return dd;
    };
    const lat = res.latencyMs;
    add('Requests', res.completed + ' of ' + res.totalRequests + ' in ' + res.durationMs + ' ms');
    add('Throughput', res.throughput.toFixed(1) + ' req/s').id = 'load-throughput';
    add('Latency ms', 'p50 ' + lat.p50 + ' · p90 ' + lat.p90 + ' · p99 ' + lat.p99 + ' · max ' + lat.max);
    add('Status counts', Object.entries(res.statusCounts).map(([k, n]) => k + ': ' + n).join(', ') || 'none');
    add('Errors / timeouts', res.errors + ' / ' + res.timeouts);
    const a = res.audit;
    add('Audit', a.ok ? 'ok: ' + a.events + ' events, ' + a.items + ' items, no violation'
      : a.violationCount + ' violation(s): ' + a.violations.map((x) => x.storeId + '/' + x.sku + ' ' + x.problem).join('; '),
    a.ok ? 'verdict-ok' : 'verdict-bad').id = 'load-verdict';
    box.appendChild(dl);
  }

  async function submitLoad(ev) {
    ev.preventDefault();
    if (state.loadRunning) return;
    const v = formValues(ev.target);
    const body = { vus: Number(v.vus), iterations: Number(v.iterations), sku: v.sku,
      qty: Number(v.qty), kind: v.kind };
    state.loadRunning = true;
    $('#load-form button').disabled = true;
    $('#load-result').hidden = true;
    const bar = $('#load-progress');
    bar.max = body.iterations;
    bar.value = 0;
    say('#load-status', 'starting…');
    try {
      const res = await fetch('/v1/admin/load-test', {
        method: 'POST',
        headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
        body: JSON.stringify(body),
      });
      if (res.status !== 200) {
        const text = await res.text();
        let json = null;
        try { json = JSON.parse(text); } catch (e) { json = null; }
        say('#load-status', problemText({ status: res.status, json, text }), true);
        return;
      }
      await readEvents(res, (type, data) => {
        const d = JSON.parse(data);
        if (type === 'progress' && d.phase === 'load') {
          bar.max = d.totalRequests;
          bar.value = d.completed;
          say('#load-status', 'load: ' + d.completed + ' / ' + d.totalRequests + ' answered in '
            + d.elapsedMs + ' ms (2xx ' + d['2xx'] + ', 4xx ' + d['4xx'] + ', 5xx ' + d['5xx'] + ')');
        } else if (type === 'progress' && d.phase === 'audit') {
          bar.value = bar.max;
          say('#load-status', 'audit: ' + d.events + ' / ' + d.total + ' events');
        } else if (type === 'result') {
          bar.value = bar.max;
          say('#load-status', 'done');
          showLoadResult(d);
        } else if (type === 'error') {
          say('#load-status', problemText({ status: d.status, json: d }), true);
        }
      });
    } catch (e) {
      say('#load-status', 'load test: ' + e, true);
    } finally {
      state.loadRunning = false;
      $('#load-form button').disabled = false;
    }
  }

  // ---- chaos: workers, payment, read-only ----

  function renderWorkers(list) {
    const body = $('#workers tbody');
    body.replaceChildren(...list.workers.map((w) => {
      const tr = document.createElement('tr');
      tr.dataset.stage = w.stage;
      cell(tr, w.stage);
      cell(tr, w.state).dataset.col = 'state';
      cell(tr, w.lag === null ? '–' : w.lag, true);
      cell(tr, w.processed, true);
      cell(tr, w.failures, true);
      const td = cell(tr, '');
      if (w.state !== 'off') {
        const b = document.createElement('button');
        b.type = 'button';
        const paused = w.state === 'paused';
        b.textContent = paused ? 'Resume' : 'Pause';
        b.addEventListener('click', () => workerAction(w.stage, paused ? 'resume' : 'pause'));
        td.appendChild(b);
      }
      return tr;
    }));
    const c = list.paymentCircuit;
    $('#circuit').textContent = c
      ? 'Payment circuit (' + c.provider + '): ' + c.state + ', opened ' + c.opens + '×, '
        + c.consecutiveFailures + ' consecutive failures, ' + c.refused + ' refused'
      : 'No payment circuit breaker.';
    setReadOnly(list.readOnly);
  }

  function setReadOnly(on) {
    state.readOnly = on;
    $('#readonly-state').textContent = on ? 'on: writes are refused' : 'off';
    $('#readonly-toggle').textContent = on ? 'Turn off' : 'Turn on';
    $('#readonly-badge').hidden = !on;
  }

  async function workerAction(stage, action) {
    const r = await api('POST', '/v1/admin/workers/' + stage + ':' + action);
    say('#chaos-msg', r.status === 200 ? stage + ' ' + r.json.state : problemText(r), r.status !== 200);
    refreshWorkers();
  }

  async function refreshWorkers() {
    if (!state.token || state.adminDenied) return;
    const r = await api('GET', '/v1/admin/workers');
    if (r.status === 200) {
      renderWorkers(r.json);
    } else if (r.status === 401 || r.status === 403) {
      state.adminDenied = true; // a read or write token: stop asking
      say('#chaos-msg', problemText(r), true);
    }
  }

  let adminTimer = 0;
  function pollAdmin() {
    clearInterval(adminTimer);
    refreshWorkers();
    adminTimer = setInterval(refreshWorkers, ADMIN_POLL_MS);
  }

  async function submitPayment(ev) {
    ev.preventDefault();
    const v = formValues(ev.target);
    const r = await api('PUT', '/v1/admin/payment', { failureRate: Number(v.failureRate),
      latencyMs: Number(v.latencyMs), timeoutRate: Number(v.timeoutRate) });
    say('#chaos-msg', r.status === 200
      ? 'payment: failure rate ' + r.json.failureRate + ', latency ' + r.json.latencyMs
        + ' ms, timeout rate ' + r.json.timeoutRate
      : problemText(r), r.status !== 200);
  }

  async function toggleReadOnly() {
    const r = await api('PUT', '/v1/admin/read-only', { enabled: !state.readOnly });
    if (r.status === 200) {
      setReadOnly(r.json.readOnly);
      say('#chaos-msg', 'read-only mode ' + (r.json.readOnly ? 'on' : 'off'));
    } else {
      say('#chaos-msg', problemText(r), true);
    }
  }

  // ---- metrics: /metrics parsed here ----

  // Prometheus text format -> [{name, labels, value}].
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split('\n')) {
      if (line === '' || line[0] === '#') continue;
      const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/);
      if (!m) continue;
      const labels = {};
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l;
      while ((l = re.exec(m[2] || '')) !== null) labels[l[1]] = l[2];
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  function series(samples, name, filter) {
    return samples.filter((s) => s.name === name && (!filter || filter(s.labels)));
  }

  function total(samples, name, filter) {
    const found = series(samples, name, filter);
    return found.length === 0 ? null : found.reduce((a, s) => a + s.value, 0);
  }

  const PURCHASE_ROUTES = ['/v1/purchase', '/purchase', '/buy_ticket'];
  const ORDER_ROUTES = ['/v1/orders', '/orders'];
  // Long-lived answers, left out of the latency quantiles.
  const LONG_ROUTES = ['/v1/stream', '/v1/admin/load-test', '/admin/load-test', '/v1/admin/audit'];

  // Answered (2xx when the counter has a code label) requests of routes, by POST.
  function requestsOf(samples, routes) {
    return total(samples, 'stockd_http_requests_total', (l) => routes.includes(l.route)
      && (l.method === undefined || l.method === 'POST')
      && (l.code === undefined || l.code[0] === '2'));
  }

  // Quantile q of the latency histogram's increase between two scrapes (seconds), or null.
  function latencyQuantile(prev, cur, q) {
    const buckets = (samples) => {
      const m = new Map();
      for (const s of series(samples, 'stockd_http_request_duration_seconds_bucket',
        (l) => !LONG_ROUTES.includes(l.route))) {
        const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
        m.set(le, (m.get(le) || 0) + s.value);
      }
      return m;
    };
    const a = buckets(prev);
    const b = buckets(cur);
    const les = Array.from(b.keys()).sort((x, y) => x - y);
    if (les.length === 0) return null;
    const counts = les.map((le) => b.get(le) - (a.get(le) || 0));
    const n = counts[counts.length - 1];
    if (!(n > 0)) return null;
    const rank = q * n;
    for (let i = 0; i < les.length; i++) {
      if (counts[i] >= rank) {
        if (les[i] === Infinity) return i > 0 ? les[i - 1] : null;
        const lo = i > 0 ? les[i - 1] : 0;
        const below = i > 0 ? counts[i - 1] : 0;
        const inBucket = counts[i] - below;
        return inBucket > 0 ? lo + (les[i] - lo) * (rank - below) / inBucket : les[i];
      }
    }
    return null;
  }

  // Per-second rate of a counter between two scrapes dt seconds apart.
  function rate(prevValue, curValue, dt) {
    if (prevValue === null || curValue === null || dt <= 0) return null;
    return Math.max(0, curValue - prevValue) / dt;
  }

  function ratio(num, den) {
    return num === null || den === null || den <= 0 ? null : num / den;
  }

  function delta(prev, cur, name) {
    const a = total(prev, name);
    const b = total(cur, name);
    return a === null || b === null ? null : b - a;
  }

  const CIRCUIT = ['closed', 'half-open', 'open'];
  // The cards: id, title, unit, and how a value comes from (previous, current, seconds).
  const CARDS = [
    { id: 'purchases', title: 'Purchases / s', unit: '/s',
      get: (p, c, dt) => rate(requestsOf(p, PURCHASE_ROUTES), requestsOf(c, PURCHASE_ROUTES), dt) },
    { id: 'orders', title: 'Checkout orders / s', unit: '/s',
      get: (p, c, dt) => rate(requestsOf(p, ORDER_ROUTES), requestsOf(c, ORDER_ROUTES), dt) },
    { id: 'p50', title: 'Latency p50 (HTTP)', unit: 'ms', histogram: true,
      get: (p, c) => scale(latencyQuantile(p, c, 0.5), 1000) },
    { id: 'p99', title: 'Latency p99 (HTTP)', unit: 'ms', histogram: true,
      get: (p, c) => scale(latencyQuantile(p, c, 0.99), 1000) },
    { id: 'batch', title: 'Writer batch size (mean)', unit: '',
      get: (p, c) => ratio(delta(p, c, 'stockd_writer_batch_size_sum'),
        delta(p, c, 'stockd_writer_batch_size_count')) },
    { id: 'commit', title: 'Writer commit time (mean)', unit: 'ms',
      get: (p, c) => scale(commitSeconds(p, c), 1000) },
    { id: 'queue', title: 'Queue depth', unit: '', get: (p, c) => total(c, 'stockd_queue_depth') },
    { id: 'projection', title: 'Projection lag', unit: 'ms',
      get: (p, c) => scale(total(c, 'stockd_projection_lag_seconds'), 1000) },
    { id: 'relay', title: 'Relay lag', unit: 'events',
      get: (p, c) => total(c, 'stockd_relay_lag_events') },
    { id: 'dlt', title: 'Dead letters', unit: '',
      get: (p, c) => total(c, 'stockd_dead_letters') },
    { id: 'circuit', title: 'Payment circuit', unit: '', text: (v) => CIRCUIT[v] || String(v),
      get: (p, c) => total(c, 'stockd_payment_circuit_state') },
  ];

  function scale(v, k) {
    return v === null ? null : v * k;
  }

  // The mean commit time between two scrapes: a commit histogram when there is one, else the
  // total of commit seconds over the batches.
  function commitSeconds(p, c) {
    for (const name of ['stockd_writer_commit_seconds', 'stockd_writer_commit_duration_seconds']) {
      const v = ratio(delta(p, c, name + '_sum'), delta(p, c, name + '_count'));
      if (total(c, name + '_count') !== null) return v;
    }
    return ratio(delta(p, c, 'stockd_writer_commit_seconds_total'),
      delta(p, c, 'stockd_writer_batches_total'));
  }

  const metrics = { prev: null, prevAt: 0, history: new Map() };

  function buildCards() {
    const box = $('#metrics');
    for (const card of CARDS) {
      const div = document.createElement('div');
      div.className = 'card';
      div.id = 'metric-' + card.id;
      const t = document.createElement('div');
      t.className = 'title';
      t.textContent = card.title;
      const v = document.createElement('div');
      v.className = 'value';
      v.textContent = '…';
      const canvas = document.createElement('canvas');
      div.append(t, v, canvas);
      box.appendChild(div);
      metrics.history.set(card.id, []);
    }
  }

  function formatValue(card, v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (card.text) return card.text(v);
    const digits = Math.abs(v) >= 100 || Number.isInteger(v) ? 0 : Math.abs(v) >= 10 ? 1 : 2;
    return v.toFixed(digits) + (card.unit ? ' ' + card.unit : '');
  }

  async function pollMetrics() {
    const r = await api('GET', '/metrics');
    if (r.status !== 200) return;
    const now = performance.now();
    const cur = parseMetrics(r.text);
    const hasHistogram = series(cur, 'stockd_http_request_duration_seconds_bucket').length > 0;
    const first = metrics.prev === null;
    const prev = first ? cur : metrics.prev;
    const dt = first ? 0 : (now - metrics.prevAt) / 1000;
    for (const card of CARDS) {
      const el = document.getElementById('metric-' + card.id);
      const valueEl = el.querySelector('.value');
      let v = card.get(prev, cur, dt);
      if (card.histogram && !hasHistogram) {
        valueEl.textContent = 'n/a';
        valueEl.title = 'no stockd_http_request_duration_seconds histogram in /metrics';
        v = null;
      } else if (card.id === 'relay' && v === null) {
        valueEl.textContent = 'n/a';
        valueEl.title = 'no outbox relay (--amqp)';
      } else if (!first || !['purchases', 'orders', 'batch', 'commit'].includes(card.id)) {
        valueEl.textContent = formatValue(card, v);
      }
      const h = metrics.history.get(card.id);
      if (!first) h.push(v);
      if (h.length > HISTORY_POINTS) h.shift();
      drawSpark(el.querySelector('canvas'), h);
    }
    metrics.prev = cur;
    metrics.prevAt = now;
  }

  // A line of the last points (null: a gap), scaled from 0 to the maximum.
  function drawSpark(canvas, points) {
    const ratioPx = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * ratioPx));
    const h = Math.max(1, Math.round(canvas.clientHeight * ratioPx));
    if (canvas.width !== w) canvas.width = w;
    if (canvas.height !== h) canvas.height = h;
    const g = canvas.getContext('2d');
    g.clearRect(0, 0, w, h);
    g.fillStyle = '#f6f8fa';
    g.fillRect(0, 0, w, h);
    const values = points.filter((v) => v !== null && !Number.isNaN(v));
    if (values.length === 0) return;
    const max = Math.max(...values) || 1;
    const pad = 3 * ratioPx;
    const x = (i) => (i / (HISTORY_POINTS - 1)) * (w - 2 * pad) + pad;
    const y = (v) => h - pad - (v / max) * (h - 2 * pad);
    g.strokeStyle = '#2f6fdb';
    g.lineWidth = 1.5 * ratioPx;
    g.beginPath();
    let drawing = false;
    const offset = HISTORY_POINTS - points.length;
    points.forEach((v, i) => {
      if (v === null || Number.isNaN(v)) {
        drawing = false;
        return;
      }
      if (drawing) g.lineTo(x(i + offset), y(v));
      else g.moveTo(x(i + offset), y(v));
      drawing = true;
    });
    g.stroke();
    g.fillStyle = '#68717d';
    g.font = 10 * ratioPx + 'px system-ui, sans-serif';
    g.fillText('max ' + (Number.isInteger(max) ? max : max.toPrecision(3)), pad, 10 * ratioPx);
  }

  // ---- health ----

  async function pollHealth() {
    const r = await api('GET', '/health');
    const el = $('#health');
    const status = r.json && r.json.status ? r.json.status : r.status === 0 ? 'unreachable' : 'HTTP ' + r.status;
    el.textContent = 'health: ' + status;
    el.className = 'badge ' + (status === 'ok' ? 'ok' : status === 'degraded' ? 'warn' : 'bad');
    if (r.json && !state.token) $('#readonly-badge').hidden = !r.json.readOnly;
  }

  // ---- start ----

  function start() {
    $('#token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('#token-input').value.trim();
      $('#token-input').value = '';
      if (token) useToken(token);
    });
    $('#token-forget').addEventListener('click', forgetToken);
    $('#adjust-form').addEventListener('submit', submitAdjust);
    $('#set-form').addEventListener('submit', submitSet);
    $('#order-form').addEventListener('submit', submitOrder);
    $('#load-form').addEventListener('submit', submitLoad);
    $('#payment-form').addEventListener('submit', submitPayment);
    $('#readonly-toggle').addEventListener('click', toggleReadOnly);
    $('#orders tbody').addEventListener('click', (ev) => {
      const tr = ev.target.closest('tr');
      if (tr && tr.dataset.order) showOrder(tr.dataset.order);
    });
    buildCards();
    showToken();
    pollMetrics();
    setInterval(pollMetrics, METRICS_POLL_MS);
    pollHealth();
    setInterval(pollHealth, HEALTH_POLL_MS);
    if (state.token) startWithToken();
  }

  start();
})();
