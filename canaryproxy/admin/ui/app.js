// canaryproxy admin page: plain JS, no libraries, nothing inline (the page's CSP forbids it).
// Reads the /admin JSON API every 2 s with the operator's token (sessionStorage, sent only as
// an Authorization header) and draws each service as a card with live charts.
'use strict';
(() => {
  const KEY = 'canaryproxy.admin.token';
  const EVERY_MS = 2000;
  const KEEP_MS = 5 * 60 * 1000; // chart history kept in the page
  const POOLS = ['stable', 'canary'];
  const CHARTS = [
    ['rate', 'requests per second', (v) => perSecond(v)],
    ['error_rate', 'error rate', (v) => pct(v)],
    ['p99_ms', 'p99 latency', (v) => ms(v)],
  ];
  const ROLLOUT_ACTIONS = ['start', 'pause', 'resume', 'promote', 'abort'];
  const cards = new Map(); // service name → card
  let timer = null;
  let generation = 0; // only the newest refresh schedules the next one

  // --- small helpers -------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) el.append(kid);
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  const missing = (v) => v === null || v === undefined;
  const num = (n) => (missing(n) ? '–' : Number(n).toLocaleString('en-US'));
  const ms = (n) => (missing(n) ? '–' : n.toFixed(n < 10 ? 1 : 0) + ' ms');
  const perSecond = (n) => (missing(n) ? '–' : n.toFixed(n < 10 ? 1 : 0) + '/s');
  const pct = (r) => (missing(r) ? '–' : (r * 100).toFixed(r >= 0.1 || r === 0 ? 0 : r >= 0.01 ? 1 : 2) + ' %');

  function niceCeil(x) {
    const p = 10 ** Math.floor(Math.log10(x));
    return [1, 2, 5, 10].find((m) => m * p >= x) * p;
  }

  function setText(el, text, cls) {
    el.textContent = text;
    if (cls !== undefined) el.className = cls;
  }

  // --- the API -------------------------------------------------------------------------------
  const token = () => sessionStorage.getItem(KEY) || '';

  const apiError = (status, message) => Object.assign(new Error(message), { status });

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + token(), Accept: 'application/json' };
    const init = { method, headers, credentials: 'omit', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw apiError(0, 'the admin API does not answer (' + err.message + ')');
    }
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw apiError(resp.status, (data && data.error) || 'HTTP ' + resp.status);
    return data;
  }

  const servicePath = (name, tail) => '/admin/services/' + encodeURIComponent(name) + tail;

  // --- refreshing ----------------------------------------------------------------------------
  function status(text, kind) {
    setText($('status'), text, 'status ' + (kind || ''));
  }

  function clearAll() {
    for (const c of cards.values()) c.root.remove();
    cards.clear();
    $('audit').hidden = true;
    $('audit-rows').replaceChildren();
  }

  async function refresh() {
    const mine = ++generation;
    clearTimeout(timer);
    if (!token()) {
      clearAll();
      status('Enter the admin token above to see the services. Without it this page shows nothing.', 'warn');
      return;
    }
    try {
      const [list, audit] = await Promise.all([api('GET', '/admin/services'), api('GET', '/admin/audit?limit=20')]);
      const names = Object.keys(list.services).sort();
      const plans = await Promise.all(names.map((n) => api('GET', servicePath(n, '/rollout')).catch(() => null)));
      if (mine !== generation) return;
      const now = Date.now();
      names.forEach((n, i) => update(card(n), list.services[n], plans[i], now));
      for (const [n, c] of cards) {
        if (!names.includes(n)) {
          c.root.remove();
          cards.delete(n);
        }
      }
      showAudit(audit.audit);
      const count = names.length === 1 ? '1 service' : names.length + ' services';
      status(count + ', updated ' + new Date(now).toLocaleTimeString('en-GB'), 'ok');
    } catch (err) {
      if (mine !== generation) return;
      if (err.status === 401 || err.status === 403) {
        clearAll();
        status(
          err.status === 401
            ? 'The admin token is missing or wrong (401). Type the right token above.'
            : 'The admin API is disabled: the proxy has no admin.token configured (403).',
          'error',
        );
        return; // no point asking again with the same token
      }
      status('Not updated: ' + err.message + '. Retrying…', 'error');
    }
    timer = setTimeout(refresh, EVERY_MS);
  }

  // --- a service's card ----------------------------------------------------------------------
  const COLUMNS = ['req/s', 'requests', 'errors', 'error rate', 'p50', 'p99', 'backends up'];

  function button(label, action, cls, onclick) {
    return h('button', { type: 'button', class: cls, 'data-action': action, onclick }, label);
  }

  function card(name) {
    if (cards.has(name)) return cards.get(name);
    const c = { name, history: [], dirty: false, el: {} };
    const e = c.el;
    e.verdict = h('span', { class: 'badge' });
    e.weight = h('span', { class: 'num weight' });
    e.source = h('span', { class: 'muted' });
    e.ejected = h('p', { class: 'ejected' });
    e.evidence = h('p', { class: 'evidence' });
    e.rollout = h('p', { class: 'rollout' });
    e.waits = h('p', { class: 'waits' });
    e.steps = h('div', { class: 'steps' });
    e.backends = h('ul', { class: 'backends' });
    e.pools = {};
    const rows = POOLS.map((pool) => {
      e.pools[pool] = COLUMNS.map(() => h('td', { class: 'num' }));
      const label = h('th', {}, h('span', { class: 'swatch ' + pool }), pool);
      return h('tr', {}, label, ...e.pools[pool]);
    });
    const table = h(
      'table',
      { class: 'pools' },
      h('thead', {}, h('tr', {}, ...['pool', ...COLUMNS].map((t) => h('th', {}, t)))),
      h('tbody', {}, ...rows),
    );
    e.charts = CHARTS.map(([key, title, fmt]) => {
      const value = h('span', { class: 'num muted' });
      const plot = svg('svg', { viewBox: '0 0 300 60', preserveAspectRatio: 'none', class: 'plot' });
      plot.setAttribute('aria-label', title + ' of stable and canary');
      const box = h('figure', { class: 'chart' }, h('figcaption', {}, title, ' ', value), plot);
      return { key, fmt, value, plot, box };
    });
    const legend = h('p', { class: 'legend muted' }, h('span', { class: 'swatch stable' }), 'stable ',
      h('span', { class: 'swatch canary' }), 'canary · up to 5 min');

    // The controls: each group shows the outcome of its last action (the API's error on 4xx).
    const msg = () => h('span', { class: 'msg', role: 'status' });
    [e.weightMsg, e.ejectMsg, e.rolloutMsg] = [msg(), msg(), msg()];
    const range = { min: '0', max: '100', step: '0.5' };
    e.slider = h('input', { type: 'range', ...range, class: 'slider', 'aria-label': 'canary weight' });
    e.exact = h('input', { type: 'number', ...range, class: 'exact num', 'aria-label': 'canary weight' });
    const dial = (src, dst) => () => {
      dst.value = src.value;
      c.dirty = true; // the refresh leaves a weight being chosen alone
    };
    e.slider.addEventListener('input', dial(e.slider, e.exact));
    e.exact.addEventListener('input', dial(e.exact, e.slider));
    const setWeight = button('set weight', 'weight', 'primary', () => {
      const canary = e.exact.value.trim() === '' ? null : Number(e.exact.value); // NaN → null → 400
      act(c, e.weightMsg, setWeight, 'PUT', '/weight', { canary }, 'weight set');
    });
    e.reason = h('input', { type: 'text', class: 'reason', placeholder: 'reason (optional)', maxlength: '500' });
    const eject = button('eject', 'eject', 'danger', () => {
      if (!window.confirm('Eject the canary of ' + name + '? Its users go to stable, every canary pin ends.')) return;
      const reason = e.reason.value.trim();
      act(c, e.ejectMsg, eject, 'POST', '/eject', reason ? { reason } : {}, 'ejected');
    });
    const restore = button('restore', 'restore', '', () =>
      act(c, e.ejectMsg, restore, 'POST', '/restore', {}, 'restored'),
    );
    e.stepsInput = h('input', { type: 'text', class: 'steps-input num', placeholder: 'steps: 5, 25, 100 (optional)' });
    const plan = ROLLOUT_ACTIONS.map((action) => {
      const b = button(action, action, action === 'abort' ? 'danger' : '', () => rollout(c, action, b));
      return b;
    });

    c.root = h(
      'section',
      { class: 'card service', 'data-service': name },
      h('header', { class: 'card-head' }, h('h2', {}, name), e.verdict, h('span', { class: 'spacer' }),
        h('span', { class: 'muted' }, 'canary weight '), e.weight, e.source),
      e.ejected,
      h(
        'div',
        { class: 'grid' },
        h('div', {}, table, e.evidence, e.rollout, e.waits, e.steps, h('h3', {}, 'backends'), e.backends),
        h('div', { class: 'charts' }, ...e.charts.map((ch) => ch.box), legend),
      ),
      h(
        'div',
        { class: 'controls' },
        h('div', { class: 'control' }, h('label', {}, 'weight'), e.slider, e.exact,
          h('span', { class: 'muted' }, '%'), setWeight, e.weightMsg),
        h('div', { class: 'control' }, e.reason, eject, restore, e.ejectMsg),
        h('div', { class: 'control' }, h('label', {}, 'rollout'), e.stepsInput, ...plan, e.rolloutMsg),
      ),
    );
    $('services').append(c.root);
    cards.set(name, c);
    return c;
  }

  // One change through the API; its outcome next to the control, then a refresh at once.
  async function act(c, msgEl, btn, method, tail, body, done) {
    for (const m of [c.el.weightMsg, c.el.ejectMsg, c.el.rolloutMsg]) setText(m, '', 'msg');
    setText(msgEl, '…', 'msg');
    btn.disabled = true;
    try {
      await api(method, servicePath(c.name, tail), body);
      setText(msgEl, done, 'msg ok');
      c.dirty = false; // the slider follows the service's weight again
    } catch (err) {
      setText(msgEl, (err.status ? err.status + ': ' : '') + err.message, 'msg error');
    } finally {
      btn.disabled = false;
    }
    refresh();
  }

  function rollout(c, action, btn) {
    const body = {};
    if (action === 'abort') {
      if (!window.confirm('Abort the rollout of ' + c.name + '? This ejects the canary.')) return;
      const reason = c.el.reason.value.trim();
      if (reason) body.reason = reason;
    }
    if (action === 'start' && c.el.stepsInput.value.trim()) {
      body.steps = c.el.stepsInput.value.split(/[\s,]+/).filter(Boolean).map(Number);
    }
    act(c, c.el.rolloutMsg, btn, 'POST', '/rollout/' + action, body, 'rollout: ' + action);
  }

  // --- drawing -------------------------------------------------------------------------------
  function update(c, state, plan, now) {
    const e = c.el;
    const weight = Number(state.canary_weight);
    setText(e.verdict, state.verdict.replace(/_/g, ' '), 'badge v-' + state.verdict);
    setText(e.weight, weight + ' %');
    setText(e.source, state.weight_source ? ' set by ' + state.weight_source : '');
    e.ejected.hidden = !state.ejected;
    const why = state.ejected ? (state.eject_reason || '') + ' (rule: ' + (state.eject_rule || '?') + ')' : '';
    setText(e.ejected, state.ejected ? 'EJECTED: ' + why : '');
    if (!c.dirty && document.activeElement !== e.slider && document.activeElement !== e.exact) {
      e.slider.value = String(weight);
      e.exact.value = String(weight);
    }
    const sample = sampleOf(state, c.history[c.history.length - 1], now);
    for (const pool of POOLS) {
      const w = sample[pool];
      const up = state.backends.filter((b) => b.pool === pool);
      const values = [perSecond(w.rate), num(w.requests), num(w.errors), w.requests ? pct(w.error_rate) : '–',
        ms(w.p50_ms), ms(w.p99_ms), up.filter((b) => b.healthy).length + '/' + up.length];
      e.pools[pool].forEach((td, i) => setText(td, values[i]));
    }
    setText(e.evidence, state.has_canary === false ? 'no canary pool configured' : evidenceLine(state.evidence));
    showPlan(c, plan);
    e.backends.replaceChildren(...state.backends.map(backendItem));
    c.history.push(sample);
    while (c.history.length && c.history[0].t < now - KEEP_MS) c.history.shift();
    for (const ch of e.charts) draw(ch, c.history, now);
  }

  // A point of the charts: the window's numbers and requests per second since the last one.
  function sampleOf(state, prev, now) {
    const sample = { t: now };
    for (const pool of POOLS) {
      const total = ((state.evidence || {})[pool] || {}).requests_since_reset;
      const before = prev && prev[pool].total;
      const fresh = typeof total === 'number' && typeof before === 'number' && total >= before;
      const rate = fresh && now > prev.t ? ((total - before) * 1000) / (now - prev.t) : null;
      sample[pool] = Object.assign({}, state.window[pool] || {}, { total, rate });
    }
    return sample;
  }

  function evidenceLine(ev) {
    if (!ev || !ev.odds) return 'evidence: none yet';
    const share = ev.canary_share_of_requests_window ?? ev.canary_share_of_requests;
    const parts = ['canary: ' + pct(share) + ' of requests, ' + pct(ev.canary_share_of_errors) + ' of errors'];
    if (!missing(ev.error_rate_ratio)) {
      parts.push('error rate ' + Number(ev.error_rate_ratio).toPrecision(2) + '× stable’s');
    }
    parts.push('odds ' + ev.odds + ' against no-worse-than-stable, ejects at ' + ev.threshold_odds);
    if (!missing(ev.canary_requests_needed)) {
      parts.push('~' + ev.canary_requests_needed + ' more canary requests to decide');
    }
    return parts.join('; ');
  }

  function showPlan(c, plan) {
    const e = c.el;
    e.steps.replaceChildren();
    setText(e.waits, '');
    if (!plan) return setText(e.rollout, 'rollout: –', 'rollout');
    let line = 'rollout: ' + plan.state;
    if (plan.step >= 0) line += ', step ' + (plan.step + 1) + '/' + plan.steps.length + ' (' + plan.weight + ' %)';
    setText(e.rollout, line, 'rollout r-' + plan.state);
    const waits = plan.waiting_for && plan.waiting_for.length ? 'Waiting for ' + plan.waiting_for.join(' and ') : '';
    setText(e.waits, [waits, plan.reason ? 'Last move: ' + plan.reason : ''].filter(Boolean).join('. '));
    const where = (i) => (i === plan.step ? ' current' : i < plan.step ? ' done' : '');
    e.steps.replaceChildren(...plan.steps.map((w, i) => h('span', { class: 'step' + where(i) }, w + ' %')));
  }

  function backendItem(b) {
    let why = '';
    const health = b.health || {};
    if (!b.healthy) {
      if (health.outlier && health.outlier.ejected) why = 'outlier-ejected until ' + health.outlier.until;
      else if (health.active && health.active.last_error) why = health.active.last_error;
      else why = 'out of rotation';
    }
    return h(
      'li',
      { class: b.healthy ? 'up' : 'down' },
      h('span', { class: 'dot' }),
      h('span', { class: 'tag ' + b.pool }, b.pool),
      h('span', { class: 'num' }, b.url),
      h('span', { class: 'muted' }, b.healthy ? 'healthy' : 'unhealthy: ' + why),
    );
  }

  function draw(ch, history, now) {
    const values = history.flatMap((s) => POOLS.map((p) => s[p][ch.key])).filter((v) => v !== null && v >= 0);
    const floor = { rate: 1, error_rate: 0.01, p99_ms: 10 }[ch.key];
    const top = niceCeil(Math.max(floor, ...values) * 1.05);
    const span = Math.min(KEEP_MS, Math.max(60000, now - history[0].t));
    const last = history[history.length - 1];
    const latest = POOLS.map((p) => p + ' ' + ch.fmt(last[p][ch.key])).join(' · ');
    setText(ch.value, latest + ' (top ' + ch.fmt(top) + ')');
    const lines = POOLS.map((pool) => {
      let d = '';
      let pen = 'M';
      for (const s of history) {
        const v = s[pool][ch.key];
        if (typeof v !== 'number') {
          pen = 'M';
          continue;
        }
        const x = (300 * (s.t - (now - span))) / span;
        const y = 58 - (56 * v) / top;
        d += pen + x.toFixed(1) + ' ' + y.toFixed(1) + ' ';
        pen = 'L';
      }
      return svg('path', { d: d || 'M0 0', class: 'line ' + pool });
    });
    ch.plot.replaceChildren(svg('line', { x1: '0', y1: '58', x2: '300', y2: '58', class: 'axis' }), ...lines);
  }

  function showAudit(rows) {
    $('audit').hidden = false;
    const when = (t) => String(t).replace('T', ' ').replace(/Z$/, '');
    const cells = (r) => [when(r.time), r.who, r.service, r.action, r.old + ' → ' + r.new].map((t) => h('td', {}, t));
    const none = h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'no changes yet'));
    $('audit-rows').replaceChildren(...(rows.length ? rows.map((r) => h('tr', {}, ...cells(r))) : [none]));
  }

  // --- the token -----------------------------------------------------------------------------
  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const value = $('token').value.trim();
      $('token').value = '';
      if (value) sessionStorage.setItem(KEY, value);
      refresh();
    });
    $('token-forget').addEventListener('click', () => {
      sessionStorage.removeItem(KEY);
      refresh();
    });
    refresh();
  });
})();
