// llm-gateway console: plain JavaScript, no framework, no build step, nothing loaded from elsewhere.
// Every call goes to this origin's admin API (or /v1 for the playground) with the admin key as an
// Authorization header. The key lives in this tab's sessionStorage only: never in a URL, never in
// local storage, never in a cookie. Text from the gateway (names, errors, log lines, answers) is only ever
// set as textContent, never parsed as HTML.
'use strict';
(() => {
  const KEY_STORE = 'llm-gateway.admin-key';
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    session: null, // {key, actions}
    page: null,
    stops: [], // what the current page runs (pollers, streams): stopped when it is left
    models: [],
    names: [], // every model's name, sorted: their colours
  };

  // -- small helpers ---------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  function s(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  const MiB = 2 ** 20;
  function bytes(n) {
    if (n === null || n === undefined) return '—';
    if (n >= 10 * 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
    if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
    return `${Math.round(n / MiB)} MiB`;
  }
  function seconds(x) {
    if (x === null || x === undefined) return '—';
    if (x < 1) return `${Math.round(x * 1000)} ms`;
    if (x < 60) return `${x.toFixed(1)} s`;
    const m = Math.floor(x / 60);
    if (m < 60) return `${m}m ${String(Math.floor(x % 60)).padStart(2, '0')}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
  }
  function clock(t) {
    const d = new Date(t * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }
  function colour(name) {
    const i = state.names.indexOf(name);
    let n = i;
    if (i < 0) n = [...name].reduce((a, c) => (a * 31 + c.charCodeAt(0)) >>> 0, 7);
    return n % 8;
  }

  // Replace a container's children, keeping the keyboard focus on the same control (data-fid), or on the
  // next one of its row (data-row) when that control is gone or disabled: polling must not move the focus.
  function swap(container, nodes) {
    const active = document.activeElement;
    const inside = active && active !== document.body && container.contains(active);
    const fid = inside ? active.dataset.fid : null;
    const row = inside && active.closest('[data-row]') ? active.closest('[data-row]').dataset.row : null;
    container.replaceChildren(...nodes);
    if (!inside) return;
    let again = fid ? container.querySelector(`[data-fid="${CSS.escape(fid)}"]`) : null;
    if (!again || again.disabled) {
      const r = row !== null ? container.querySelector(`[data-row="${CSS.escape(row)}"]`) : null;
      again = r ? r.querySelector('button:not(:disabled), select, input') : null;
    }
    (again || $('main')).focus({ preventScroll: true });
  }

  function fillSelect(select, options, placeholder) {
    const wanted = options.map(([v, label]) => `${v}\u0000${label}`).join('\u0001');
    if (select.dataset.options === wanted) return;
    const value = select.value;
    const nodes = placeholder ? [h('option', { value: '', text: placeholder })] : [];
    for (const [v, label] of options) nodes.push(h('option', { value: v, text: label }));
    select.replaceChildren(...nodes);
    select.dataset.options = wanted;
    if ([...select.options].some((o) => o.value === value)) select.value = value;
  }

  let sayTimer = null;
  function say(text, bad = false) {
    const el = $('status');
    el.textContent = text;
    el.classList.toggle('bad', bad);
    clearTimeout(sayTimer);
    if (!bad && text) sayTimer = setTimeout(() => { el.textContent = ''; }, 8000);
  }

  // -- the API ------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function headers(json) {
    const out = {};
    if (state.key) out.Authorization = `Bearer ${state.key}`;
    if (json) out['Content-Type'] = 'application/json';
    return out;
  }

  async function request(path, { method = 'GET', body, signal } = {}) {
    let r;
    try {
      r = await fetch(path, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, `the gateway did not answer (${e.message})`);
    }
    if (r.ok) return r;
    let message = `${r.status} ${r.statusText}`;
    try {
      const b = await r.json();
      if (b && b.error && b.error.message) message = b.error.message;
    } catch (_) { /* not JSON */ }
    if (r.status === 401 && state.key && path.startsWith('/admin')) keyRefused();
    throw new ApiError(r.status, message);
  }

  async function api(path, options) {
    return (await request(path, options)).json();
  }

  // An SSE body, event by event: calls onData with each event's data (a string).
  async function readEvents(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart());
        if (data.length && onData(data.join('\n')) === false) {
          reader.cancel();
          return;
        }
      }
    }
  }

  // -- pages: what runs while one is shown ----------------------------------------------------------------
  function every(ms, step) {
    let stopped = false;
    let timer = null;
    const run = async () => {
      if (stopped) return;
      if (!document.hidden) {
        try { await step(); } catch (e) { if (e.name !== 'AbortError' && !stopped) say(e.message, true); }
      }
      if (!stopped) timer = setTimeout(run, ms);
    };
    state.stops.push(() => { stopped = true; clearTimeout(timer); });
    run();
  }

  function controller() {
    const c = new AbortController();
    state.stops.push(() => c.abort());
    return c;
  }

  function leavePage() {
    for (const stop of state.stops.splice(0)) stop();
  }

  async function refreshModels() {
    const data = await api('/admin/models');
    state.models = data.models;
    state.lastDevices = data.devices; // what holds each device: the plan's bars
    state.names = data.models.map((m) => m.name).sort();
    return data;
  }

  function modelOptions(label) {
    return state.models.map((m) => [m.name, label ? label(m) : `${m.name} (${m.state})`]);
  }

  const canAct = () => state.session && state.session.actions;

  // -- confirm dialog -------------------------------------------------------------------------------------
  function confirmDialog(title, body, okLabel, danger = false) {
    const dialog = $('confirm');
    const ok = $('confirm-ok');
    const cancel = $('confirm-cancel');
    $('confirm-title').textContent = title;
    $('confirm-body').replaceChildren(...body);
    ok.textContent = okLabel;
    ok.className = danger ? 'danger' : '';
    const before = document.activeElement;
    return new Promise((resolve) => {
      const close = (answer) => {
        ok.onclick = cancel.onclick = dialog.oncancel = null;
        dialog.close();
        if (before && before.isConnected) before.focus();
        resolve(answer);
      };
      ok.onclick = () => close(true);
      cancel.onclick = () => close(false);
      dialog.oncancel = (e) => { e.preventDefault(); close(false); };
      dialog.showModal();
      (danger ? cancel : ok).focus();
    });
  }

  // -- Models -------------------------------------------------------------------------------------------
  const Models = {
    fetchedAt: 0,
    show() {
      every(2000, () => Models.refresh());
      every(1000, async () => Models.tick());
    },
    async refresh() {
      const data = await refreshModels();
      Models.fetchedAt = performance.now();
      $('models-updated').textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      $('reload-manifests').hidden = !canAct();
      const problems = data.manifest_problems.map((p) =>
        h('li', {}, h('code', { text: p.file }), p.field ? ` (${p.field})` : '', `: ${p.reason}`));
      swap($('models-problems'), problems.length
        ? [h('div', { class: 'panel error' }, h('strong', { text: 'Manifests skipped' }), h('ul', {}, problems))]
        : []);
      swap($('models-rows'), data.models.map((m) => Models.row(m)));
      Models.tick();
    },
    row(m) {
      const name = m.name;
      const kind = h('div', { class: 'sub', text: m.kind });
      const aliases = m.aliases.length ? h('div', { class: 'sub', text: `aliases: ${m.aliases.join(', ')}` }) : null;
      const healthy = m.replicas.filter((r) => r.healthy).length;
      const replicas = m.replicas.length
        ? h('div', {},
          h('div', { text: `${healthy}/${m.replicas.length} healthy` }),
          h('div', { class: 'sub' }, m.replicas.map((r) => h('span', {
            class: 'rep', title: r.reason ? `#${r.index}: ${r.reason}` : `#${r.index}: in rotation, ${r.outstanding} outstanding`,
          }, h('span', { class: `dot ${r.healthy ? 'up' : 'down'}` }), `#${r.index} `))))
        : h('span', { class: 'muted', text: '—' });
      const act = canAct();
      const busy = Models.busy[name] || '';
      const button = (action, label, enabled, extra = {}) => h('button', {
        type: 'button', class: `small ${extra.class || ''}`, 'data-fid': `${action}:${name}`,
        disabled: !enabled, 'aria-label': `${label} ${name}`, // not disabled while busy: the focus stays
        onclick: () => Models.act(action, m),
      }, label);
      const st = m.state;
      const actions = act ? [
        button('load', 'Load', st === 'unloaded' && m.fits),
        button('unload', 'Unload', st !== 'unloaded'),
        button('force', 'Force unload', st !== 'unloaded', { class: 'secondary' }),
        button(m.pinned ? 'unpin' : 'pin', m.pinned ? 'Unpin' : 'Pin', st !== 'unloaded' || m.fits, { class: 'secondary' }),
      ] : [h('span', { class: 'muted', text: 'read-only' })];
      const stateCell = [h('span', { class: `badge state-${st}`, text: st })];
      if (busy) stateCell.push(h('div', { class: 'sub', text: busy }));
      if (st === 'loading' && m.loading_seconds !== null) {
        const eta = m.load_eta_seconds !== null ? `, about ${seconds(m.load_eta_seconds)} left` : '';
        stateCell.push(h('div', { class: 'sub', text: `for ${seconds(m.loading_seconds)}${eta}` }));
      }
      if (!m.fits) stateCell.push(h('div', { class: 'sub error', text: 'never fits here' }));
      return h('tr', { 'data-row': name, 'data-state': st },
        h('td', {}, h('div', { class: 'name', text: name }), kind, aliases),
        h('td', {}, stateCell),
        h('td', {}, replicas),
        h('td', {}, Models.memory(m)),
        h('td', { text: m.pinned ? 'pinned' : '—' }),
        h('td', { class: 'ttl', 'data-ttl': JSON.stringify(Models.ttl(m)) }),
        h('td', { class: 'num', text: `${m.in_flight} / ${m.queued}` }),
        h('td', { class: 'lasterr', text: m.last_error || '' }),
        h('td', { class: 'actions' }, actions));
    },
    memory(m) {
      const lines = [];
      const claims = Object.entries(m.memory_by_device || {});
      if (m.state === 'unloaded' || !claims.length) {
        const need = m.budget ? m.budget.budget_bytes : m.memory_bytes;
        lines.push(h('div', { text: `needs ${bytes(need)}` }));
        if (m.budget) lines.push(h('div', { class: 'sub', text: `budget from the ${m.budget.uses}` }));
        return lines;
      }
      const measured = {};
      for (const r of m.replicas) {
        if (r.memory_bytes === null || r.memory_bytes === undefined) continue;
        const devices = r.devices && r.devices.length ? r.devices : [claims[0][0]];
        for (const d of devices) measured[d] = (measured[d] || 0) + r.memory_bytes / devices.length;
      }
      for (const [device, n] of claims) {
        const got = measured[device] !== undefined ? bytes(measured[device]) : '—';
        lines.push(h('div', {}, h('span', { class: 'sub', text: `${device}: ` }), `${bytes(n)} / ${got}`));
      }
      return lines;
    },
    ttl(m) {
      if (m.pinned) return { text: 'pinned: never' };
      if (m.idle_ttl === null || m.idle_ttl === undefined) return { text: '—' };
      if (m.state !== 'ready') return { text: `${seconds(m.idle_ttl)} idle` };
      if (m.in_flight || m.queued || m.idle_seconds === null) return { text: `${seconds(m.idle_ttl)} idle (busy)` };
      return { left: m.idle_ttl - m.idle_seconds };
    },
    tick() {
      const elapsed = (performance.now() - Models.fetchedAt) / 1000;
      for (const cell of document.querySelectorAll('#models-rows td.ttl')) {
        const t = JSON.parse(cell.dataset.ttl || '{}');
        cell.textContent = t.text !== undefined ? t.text : `unloads in ${seconds(Math.max(0, t.left - elapsed))}`;
      }
    },
    busy: {},
    async act(action, m) {
      const name = m.name;
      const path = `/admin/models/${encodeURIComponent(name)}`;
      const calls = {
        load: [`${path}/load`, 'Loading', (r) => `${name} is ${r.state} (loaded in ${seconds(r.load_seconds)})`],
        unload: [`${path}/unload`, 'Unloading (draining)', (r) => `${name} is ${r.state}`],
        force: [`${path}/unload?force=true`, 'Unloading now', (r) => `${name} is ${r.state}`],
        pin: [`${path}/pin`, 'Pinning', () => `${name} is pinned: never evicted`],
        unpin: [`${path}/unpin`, 'Unpinning', () => `${name} is unpinned: evictable again`],
      };
      if (action === 'force') {
        const inflight = m.in_flight ? ` Its ${m.in_flight} request(s) in flight end with an error now.` : '';
        const ok = await confirmDialog(`Force unload ${name}?`,
          [h('p', { text: `${name} is unloaded at once, without draining.${inflight}` })], 'Force unload', true);
        if (!ok) return;
      }
      const [url, doing, done] = calls[action];
      Models.busy[name] = `${doing}…`;
      say(`${doing} ${name}…`);
      Models.refresh().catch(() => {});
      try {
        const result = await api(url, { method: 'POST' });
        say(done(result));
      } catch (e) {
        if (e.name !== 'AbortError') say(`${doing} ${name} failed: ${e.message}`, true);
      } finally {
        delete Models.busy[name];
        if (state.page === 'models') Models.refresh().catch(() => {});
      }
    },
    async reload() {
      say('Reloading the manifests…');
      try {
        const r = await api('/admin/reload', { method: 'POST' });
        const part = (label, list) => (list.length ? `${label} ${list.join(', ')}` : null);
        const what = [part('added', r.added), part('removed', r.removed), part('changed', r.changed)].filter(Boolean);
        say(`Manifests reloaded: ${what.length ? what.join('; ') : 'nothing changed'}` +
          `${r.problems.length ? `; ${r.problems.length} problem(s)` : ''}.`, r.problems.length > 0);
      } catch (e) {
        say(`Reload failed: ${e.message}`, true);
      }
      Models.refresh().catch(() => {});
    },
  };

  // -- Devices ------------------------------------------------------------------------------------------
  const Devices = {
    plan: null,
    show() {
      $('plan-load').hidden = !canAct();
      every(2000, () => Devices.refresh());
      every(4000, () => Devices.charts());
    },
    async refresh() {
      const data = await refreshModels();
      $('devices-updated').textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      swap($('devices-list'), data.devices.map((d) => Devices.card(d)));
      fillSelect($('plan-model'), modelOptions((m) => `${m.name} (${m.state}, ${bytes(m.budget ? m.budget.budget_bytes : m.memory_bytes)})`),
        'Choose a model…');
      if ($('plan-model').value && !Devices.busy) await Devices.showPlan(false);
      if (Devices.series) Devices.drawCharts();
    },
    card(d) {
      const free = Math.max(0, d.budget_bytes - d.used_bytes);
      const segments = d.models.map((m) => Devices.segment(m.model, m.bytes, d.budget_bytes, m.state !== 'ready' && m.state !== 'draining', m.state));
      const legend = d.models.map((m) => h('li', {},
        h('span', { class: `sw c${colour(m.model)}` }), `${m.model} — ${bytes(m.bytes)} (${m.state})`));
      return h('article', { class: 'card', 'data-device': d.device },
        h('h3', {}, h('span', { text: d.device }), h('span', { class: 'muted', text: `${bytes(d.used_bytes)} of ${bytes(d.budget_bytes)}` })),
        h('div', { class: 'bar', role: 'img', 'aria-label': `${d.device}: ${bytes(d.used_bytes - d.reserved_bytes)} used, ${bytes(d.reserved_bytes)} reserved by loads under way, ${bytes(free)} free` }, segments),
        h('div', { class: 'sub' }, `used ${bytes(d.used_bytes - d.reserved_bytes)} · reserved by loads under way ${bytes(d.reserved_bytes)} · free ${bytes(free)}`),
        d.models.length ? h('ul', { class: 'legend' }, legend) : h('p', { class: 'muted', text: 'No model holds memory here.' }),
        h('div', { class: 'spark', 'data-spark': d.device }));
    },
    segment(model, n, budget, reserved, label, extraClass = '') {
      const seg = h('div', { class: `seg c${colour(model)} ${reserved ? 'reserved' : ''} ${extraClass}`, title: `${model}: ${bytes(n)} (${label})`, 'data-model': model }, model);
      seg.style.width = `${Math.min(100, (100 * n) / Math.max(budget, 1))}%`;
      return seg;
    },
    busy: false,
    async showPlan(announce = true) {
      const name = $('plan-model').value;
      const out = $('plan-result');
      if (!name) {
        Devices.plan = null;
        $('plan-load').disabled = true;
        out.replaceChildren();
        return;
      }
      const plan = await api(`/admin/models/${encodeURIComponent(name)}/plan`);
      if ($('plan-model').value !== name) return; // chosen another meanwhile
      Devices.plan = plan;
      $('plan-load').disabled = !(plan.fits && !plan.already_loaded) || Devices.busy;
      $('plan-load').textContent = `Load ${name}…`;
      const key = JSON.stringify(plan);
      if (!announce && out.dataset.plan === key) return;
      out.dataset.plan = key;
      swap(out, [Devices.describePlan(plan)]);
    },
    describePlan(plan) {
      const name = plan.model;
      let verdict;
      if (plan.already_loaded) verdict = h('p', { class: 'verdict fits', text: `${name} is loaded already.` });
      else if (!plan.fits) verdict = h('p', { class: 'verdict nofit', text: `${name} does not fit now: ${plan.reason}` });
      else if (plan.evict.length) verdict = h('p', { class: 'verdict fits', text: `${name} fits once ${plan.evict.join(', ')} ${plan.evict.length > 1 ? 'are' : 'is'} evicted.` });
      else verdict = h('p', { class: 'verdict fits', text: `${name} fits beside the loaded models: nothing is evicted.` });
      const parts = [verdict];
      if (plan.evict.length) {
        parts.push(h('div', {}, h('strong', { text: 'Would evict: ' }), h('span', { class: 'evict-list', text: plan.evict.join(', ') })));
      }
      if (plan.drain.length) {
        parts.push(h('div', {}, h('strong', { text: 'Would drain first (requests in flight): ' }), plan.drain.join(', ')));
      }
      if (plan.blocked_by.length) {
        parts.push(h('div', {}, h('strong', { text: 'Blocked by: ' }), plan.blocked_by.map((b) => `${b.model} (${b.reason})`).join(', ')));
      }
      if (plan.budget) parts.push(h('div', { class: 'sub', text: `${name} is budgeted at ${bytes(plan.budget.budget_bytes)} (from the ${plan.budget.uses})` }));
      const after = plan.memory_after.map((d) => {
        const device = (state.lastDevices || []).find((x) => x.device === d.device);
        const stay = device ? device.models.filter((m) => !plan.evict.includes(m.model)) : [];
        const segs = stay.map((m) => Devices.segment(m.model, m.bytes, d.budget_bytes, m.state !== 'ready', m.state));
        const mine = d.used_bytes - stay.reduce((a, m) => a + m.bytes, 0);
        if (plan.fits && !plan.already_loaded && mine > 0) segs.push(Devices.segment(name, mine, d.budget_bytes, false, 'after the load'));
        return h('div', {},
          h('div', { class: 'sub', text: `${d.device} after: ${bytes(d.used_bytes)} of ${bytes(d.budget_bytes)}` }),
          h('div', { class: 'bar', role: 'img', 'aria-label': `${d.device} after the load: ${bytes(d.used_bytes)} of ${bytes(d.budget_bytes)}` }, segs));
      });
      return h('div', { class: 'plan', 'data-model': name }, parts, h('h4', { text: 'Memory after' }), after);
    },
    async load() {
      const plan = Devices.plan;
      if (!plan) return;
      const name = plan.model;
      const body = [h('p', { text: plan.evict.length ? `Loading ${name} evicts ${plan.evict.join(', ')}.` : `${name} fits: nothing is evicted.` })];
      if (plan.drain.length) body.push(h('p', { text: `${plan.drain.join(', ')} ${plan.drain.length > 1 ? 'have' : 'has'} requests in flight: drained first, then cut after the grace period.` }));
      body.push(h('p', { class: 'sub', text: plan.memory_after.map((d) => `${d.device}: ${bytes(d.used_bytes)} of ${bytes(d.budget_bytes)} after`).join(' · ') }));
      const ok = await confirmDialog(`Load ${name}?`, body, `Load ${name}`);
      if (!ok) return;
      Devices.busy = true;
      $('plan-load').disabled = true;
      say(`Loading ${name}…`);
      try {
        const r = await api(`/admin/models/${encodeURIComponent(name)}/load`, { method: 'POST' });
        say(`${name} is ${r.state}${plan.evict.length ? `; evicted ${plan.evict.join(', ')}` : ''}.`);
      } catch (e) {
        say(`Loading ${name} failed: ${e.message}`, true);
      } finally {
        Devices.busy = false;
        if (state.page === 'devices') await Devices.refresh();
      }
    },
    series: null,
    async charts() {
      Devices.series = await api('/admin/series');
      Devices.drawCharts();
    },
    drawCharts() {
      for (const el of document.querySelectorAll('#devices-list [data-spark]')) {
        const device = el.dataset.spark;
        const column = Devices.series.devices[device];
        const values = column ? column.used_bytes : [];
        lineChart(el, Devices.series.time, [{ name: device, cls: 0, values: values.map((v) => (v === null ? null : v / MiB)) }],
          { unit: 'MiB', height: 70, caption: 'held, last 15 min (MiB)' });
      }
    },
  };

  // -- charts: inline SVG ------------------------------------------------------------------------------
  function lineChart(container, times, lines, { unit = '', height = 120, caption = null } = {}) {
    const W = Math.max(320, Math.round(container.clientWidth || 600)); // drawn at the size it shows
    const H = height;
    const L = 44;
    const B = 14;
    const T = 6;
    const R = 8;
    const nodes = [];
    if (caption) nodes.push(h('div', { class: 'sub', text: caption }));
    const all = lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined);
    if (!times.length || !all.length) {
      nodes.push(h('div', { class: 'empty', text: 'No samples yet.' }));
      container.replaceChildren(...nodes);
      return;
    }
    const t0 = times[0];
    const t1 = Math.max(times[times.length - 1], t0 + 1);
    const top = niceMax(Math.max(...all));
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const svg = s('svg', { class: 'plot', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': lines.map((l) => `${l.name}: last ${fmt(lastOf(l.values))} ${unit}`).join('; ') });
    svg.append(s('line', { class: 'axis', x1: L, y1: y(0), x2: W - R, y2: y(0) }));
    svg.append(s('line', { class: 'axis', x1: L, y1: T, x2: L, y2: y(0) }));
    const label = (text, ax, ay, anchor) => {
      const t = s('text', { x: ax, y: ay, 'text-anchor': anchor });
      t.textContent = text;
      return t;
    };
    svg.append(label(fmt(top), L - 4, T + 8, 'end'), label('0', L - 4, y(0), 'end'));
    svg.append(label(`−${seconds(t1 - t0)}`, L, H - 2, 'start'), label('now', W - R, H - 2, 'end'));
    for (const line of lines) {
      const peak = Math.max(0, ...line.values.filter((v) => v !== null && v !== undefined));
      let points = [];
      const flush = () => {
        if (points.length === 1) points.push(points[0]);
        if (points.length) svg.append(s('polyline', { class: `s${line.cls}`, points: points.join(' '), 'data-name': line.name, 'data-max': peak }));
        points = [];
      };
      line.values.forEach((v, i) => {
        if (v === null || v === undefined) flush();
        else points.push(`${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`);
      });
      flush();
    }
    nodes.push(svg);
    if (lines.length > 1 || !caption) {
      nodes.push(h('ul', { class: 'legend' }, lines.map((l) => h('li', {}, h('span', { class: `sw c${l.cls}` }), `${l.name}: ${fmt(lastOf(l.values))}${unit ? ` ${unit}` : ''}`))));
    }
    container.replaceChildren(...nodes);
  }
  function lastOf(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
    return null;
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function fmt(v) {
    if (v === null || v === undefined) return '—';
    return Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1);
  }

  // -- Logs ---------------------------------------------------------------------------------------------
  const MAX_LOG_LINES = 5000;
  const Logs = {
    chosen: '',
    stream: null,
    async show() {
      await refreshModels();
      const launched = state.models.filter((m) => m.kind !== 'llama_cpp');
      const rest = state.models.filter((m) => m.kind === 'llama_cpp');
      fillSelect($('logs-model'), [...launched, ...rest].map((m) => [m.name, `${m.name} (${m.kind}, ${m.state})`]), 'Choose a model…');
      if (Logs.chosen) $('logs-model').value = Logs.chosen;
      Logs.follow();
    },
    follow() {
      if (Logs.stream) Logs.stream.abort();
      const name = $('logs-model').value;
      Logs.chosen = name;
      $('logs-lines').replaceChildren();
      if (!name) {
        $('logs-state').textContent = '';
        return;
      }
      const c = controller();
      Logs.stream = c;
      const model = state.models.find((m) => m.name === name);
      const note = model && model.kind === 'llama_cpp' ? ' (an in-process model writes no log of its own)' : '';
      (async () => {
        while (!c.signal.aborted) {
          try {
            $('logs-state').textContent = `following ${name}${note}`;
            const r = await request(`/admin/models/${encodeURIComponent(name)}/logs?follow=true`, { signal: c.signal });
            await readEvents(r, (data) => { const d = JSON.parse(data); Logs.append(d.replica, d.line); });
          } catch (e) {
            if (e.name === 'AbortError' || c.signal.aborted) return;
            $('logs-state').textContent = `${e.message}; trying again…`;
          }
          await new Promise((r) => setTimeout(r, 2000));
        }
      })();
    },
    append(replica, line) {
      const pre = $('logs-lines');
      pre.append(h('span', { class: 'r', text: `[${replica}] ` }), `${line}\n`);
      while (pre.childNodes.length > 2 * MAX_LOG_LINES) { pre.firstChild.remove(); pre.firstChild.remove(); }
      if ($('logs-scroll').checked) pre.scrollTop = pre.scrollHeight;
    },
  };

  // -- Activity -----------------------------------------------------------------------------------------
  const Activity = {
    entries: [],
    last: 0,
    size: 200,
    show() {
      every(1000, () => Activity.refresh());
      every(2000, () => Activity.charts());
    },
    async refresh() {
      const d = await api(`/admin/activity?since=${Activity.last}`);
      Activity.size = d.size;
      $('activity-note').textContent = `the last ${d.size} requests, newest first`;
      if (!d.entries.length && Activity.rendered) return;
      Activity.entries.push(...d.entries);
      if (d.entries.length) Activity.last = d.entries[d.entries.length - 1].id;
      Activity.entries.sort((a, b) => a.time - b.time || a.id - b.id);
      Activity.entries.splice(0, Math.max(0, Activity.entries.length - d.size));
      Activity.rendered = true;
      const rows = Activity.entries.slice().reverse().map((e) => h('tr', { 'data-id': e.id, 'data-model': e.model },
        h('td', { text: clock(e.time) }),
        h('td', { text: e.model || '—' }),
        h('td', { text: e.key || '—' }),
        h('td', { class: 'sub', text: e.endpoint }),
        h('td', { class: e.status < 400 ? 'st-ok' : 'st-bad', text: e.status }),
        h('td', { class: 'num prompt', text: e.prompt_tokens ?? '—' }),
        h('td', { class: 'num completion', text: e.completion_tokens ?? '—' }),
        h('td', { class: 'num', text: e.ttft_seconds === null ? '—' : seconds(e.ttft_seconds) }),
        h('td', { class: 'num', text: e.tokens_per_second === null ? '—' : e.tokens_per_second.toFixed(1) }),
        h('td', { class: 'num', text: seconds(e.duration_seconds) })));
      if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 10, class: 'muted', text: 'No request yet.' })));
      swap($('activity-rows'), rows);
    },
    async charts() {
      if (!state.names.length) await refreshModels();
      const d = await api('/admin/series');
      const names = Object.keys(d.models);
      lineChart(contentOf('chart-tps'), d.time, names.map((n) => ({ name: n, cls: colour(n), values: d.models[n].tokens_per_second })), { unit: 'tok/s' });
      lineChart(contentOf('chart-queue'), d.time, names.map((n) => ({ name: n, cls: colour(n), values: d.models[n].queued })), { unit: 'queued' });
    },
  };
  function contentOf(figureId) {
    const fig = $(figureId);
    let body = fig.querySelector('.chart-body');
    if (!body) { body = h('div', { class: 'chart-body' }); fig.append(body); }
    return body;
  }

  // -- Playground ---------------------------------------------------------------------------------------
  const Playground = {
    history: [],
    running: null,
    async show() {
      await refreshModels();
      fillSelect($('chat-model'), modelOptions());
    },
    async send() {
      if (Playground.running) return;
      const text = $('chat-input').value.trim();
      const model = $('chat-model').value;
      if (!text || !model) return;
      const messages = [];
      const system = $('chat-system').value.trim();
      if (system) messages.push({ role: 'system', content: system });
      messages.push(...Playground.history, { role: 'user', content: text });
      const body = {
        model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        temperature: Number($('chat-temperature').value),
        max_tokens: Number($('chat-max-tokens').value),
      };
      const log = $('chat-log');
      log.append(h('div', { class: 'msg user' }, h('span', { class: 'who', text: 'you' }), text));
      const answer = h('div', { class: 'msg assistant', 'data-state': 'waiting', 'data-chunks': '0' });
      const content = document.createTextNode('');
      answer.append(h('span', { class: 'who', text: model }), content);
      log.append(answer);
      $('chat-input').value = '';
      const c = new AbortController();
      Playground.running = c;
      $('chat-send').disabled = true;
      $('chat-stop').disabled = false;
      $('chat-stats').textContent = 'waiting for the first token…';
      const began = performance.now();
      let first = null;
      let chunks = 0;
      let usage = null;
      let failed = null;
      try {
        const r = await request('/v1/chat/completions', { method: 'POST', body, signal: c.signal });
        await readEvents(r, (data) => {
          if (data === '[DONE]') return false;
          const d = JSON.parse(data);
          if (d.error) { failed = d.error.message || 'the stream ended with an error'; return false; }
          if (d.usage) usage = d.usage;
          const delta = d.choices && d.choices[0] && d.choices[0].delta;
          if (delta && delta.content) {
            if (first === null) first = performance.now();
            content.data += delta.content;
            chunks += 1;
            answer.dataset.chunks = String(chunks);
            answer.dataset.state = 'streaming';
            answer.scrollIntoView({ block: 'nearest' });
          }
          return true;
        });
      } catch (e) {
        failed = e.name === 'AbortError' ? 'stopped' : e.message;
      } finally {
        Playground.running = null;
        $('chat-send').disabled = false;
        $('chat-stop').disabled = true;
      }
      const took = (performance.now() - began) / 1000;
      answer.dataset.state = failed ? 'error' : 'done';
      if (failed && failed !== 'stopped') answer.classList.add('error');
      if (failed) answer.append(h('div', { class: 'sub', text: `(${failed})` }));
      if (content.data) Playground.history.push({ role: 'user', content: text }, { role: 'assistant', content: content.data });
      const tokens = usage ? usage.completion_tokens : chunks;
      const ttft = first === null ? null : (first - began) / 1000;
      const decode = first !== null && tokens > 1 ? (tokens - 1) / Math.max((performance.now() - first) / 1000, 1e-3) : null;
      $('chat-stats').textContent = [
        `${tokens} tokens`,
        ttft !== null ? `first after ${seconds(ttft)}` : null,
        decode !== null ? `${decode.toFixed(1)} tokens/s` : null,
        `${seconds(took)} in all`,
      ].filter(Boolean).join(' · ');
      $('chat-input').focus();
    },
  };

  // -- session and navigation -----------------------------------------------------------------------------
  const PAGES = { models: Models, devices: Devices, logs: Logs, activity: Activity, playground: Playground };

  function route(focus = false) {
    if (!state.session) return;
    const m = location.hash.match(/^#\/(\w+)/);
    const page = m && PAGES[m[1]] ? m[1] : 'models';
    if (state.page === page) return;
    leavePage();
    state.page = page;
    for (const name of Object.keys(PAGES)) $(`page-${name}`).hidden = name !== page;
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `${page[0].toUpperCase()}${page.slice(1)} · llm-gateway console`;
    if (focus) $(`${page}-title`).closest('section').querySelector('h2').focus({ preventScroll: true });
    Promise.resolve(PAGES[page].show()).catch((e) => say(e.message, true));
  }

  function renderSession() {
    const box = $('session');
    const sess = state.session;
    const nodes = [];
    if (!sess) {
      box.replaceChildren();
      return;
    }
    if (sess.key) {
      nodes.push(h('span', { class: 'muted', text: `signed in: ${sess.key} key` }));
      nodes.push(h('button', { type: 'button', class: 'secondary', id: 'logout', onclick: logout }, 'Log out'));
    } else if (!sess.actions) {
      nodes.push(h('span', { class: 'badge state-reserved', text: 'read-only' }));
      nodes.push(h('button', { type: 'button', id: 'login-open', onclick: () => showLogin(true) }, 'Log in'));
    } else {
      nodes.push(h('span', { class: 'muted', text: 'open: no admin key is set on this gateway' }));
    }
    box.replaceChildren(...nodes);
  }

  function enter() {
    $('booting').hidden = true;
    $('login').hidden = true;
    $('nav').hidden = false;
    renderSession();
    state.page = null;
    route();
  }

  function showLogin(readOnlyAvailable, message = '') {
    leavePage();
    state.page = null;
    for (const name of Object.keys(PAGES)) $(`page-${name}`).hidden = true;
    $('booting').hidden = true;
    $('nav').hidden = true;
    $('login').hidden = false;
    $('login-readonly').hidden = !readOnlyAvailable;
    $('login-error').textContent = message;
    if (!readOnlyAvailable) { state.session = null; renderSession(); }
    $('login-key').focus();
  }

  async function logIn(event) {
    event.preventDefault();
    const input = $('login-key');
    const key = input.value.trim();
    const error = $('login-error');
    if (!key) { error.textContent = 'Enter the admin key.'; return; }
    $('login-submit').disabled = true;
    error.textContent = '';
    try {
      const r = await fetch('/admin/session', { headers: { Authorization: `Bearer ${key}` }, cache: 'no-store', credentials: 'omit' });
      if (r.ok) {
        const sess = await r.json();
        input.value = '';
        if (sess.key) {
          state.key = key;
          sessionStorage.setItem(KEY_STORE, key);
        }
        state.session = sess;
        enter();
        say(sess.key ? `Signed in with the ${sess.key} key.` : 'This gateway has no admin key: it is open.');
      } else if (r.status === 401) {
        error.textContent = 'The gateway refused this key: it is not the admin key.';
      } else if (r.status === 403) {
        error.textContent = 'This is an API key for /v1, not the admin key: the console needs the admin key.';
      } else {
        error.textContent = `The gateway answered ${r.status}; try again.`;
      }
    } catch (e) {
      error.textContent = `The gateway did not answer (${e.message}).`;
    } finally {
      $('login-submit').disabled = false;
      if (!$('login').hidden) input.select();
    }
  }

  function logout() {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    state.session = null;
    say('Logged out: the key is forgotten in this tab.');
    start();
  }

  function keyRefused() {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    state.session = null;
    showLogin(false, 'The gateway no longer accepts the key this tab had: log in again.');
  }

  async function start() {
    state.key = sessionStorage.getItem(KEY_STORE);
    for (;;) {
      try {
        state.session = await api('/admin/session');
        enter();
        return;
      } catch (e) {
        if (e.status === 401 && state.key) {
          sessionStorage.removeItem(KEY_STORE);
          state.key = null;
          continue;
        }
        if (e.status === 401 || e.status === 403) {
          showLogin(false);
          return;
        }
        $('booting').textContent = `The gateway did not answer: ${e.message}. Retrying…`;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  }

  function wire() {
    $('login-form').addEventListener('submit', logIn);
    $('login-readonly').addEventListener('click', () => { $('login').hidden = true; enter(); });
    $('reload-manifests').addEventListener('click', () => Models.reload());
    $('plan-model').addEventListener('change', () => Devices.showPlan().catch((e) => say(e.message, true)));
    $('plan-load').addEventListener('click', () => Devices.load());
    $('logs-model').addEventListener('change', () => Logs.follow());
    $('logs-clear').addEventListener('click', () => $('logs-lines').replaceChildren());
    $('chat-form').addEventListener('submit', (e) => { e.preventDefault(); Playground.send(); });
    $('chat-input').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); Playground.send(); }
    });
    $('chat-stop').addEventListener('click', () => { if (Playground.running) Playground.running.abort(); });
    $('chat-clear').addEventListener('click', () => { Playground.history = []; $('chat-log').replaceChildren(); $('chat-stats').textContent = ''; });
    for (const title of document.querySelectorAll('.page h2')) title.setAttribute('tabindex', '-1');
    window.addEventListener('hashchange', () => route(true));
  }

  wire();
  start();
})();
