// warren operator console: all client logic (ES2020, no framework, no build step).
// Owns: hash routing, API calls (401 -> sign-in page, JSON errors -> the alert region),
// 2 s polling of the current page, and the pages Overview, Dead letters & failed jobs,
// Subscriptions (state per worker, pause, resume), Sagas (list, search, detail with
// timeline), Interventions and Audit. Also fills the
// ?error= message on login.html. Server strings are only ever put in the DOM as text
// (textContent / attributes), never as HTML: message bodies come from foreign publishers.
'use strict';

// ---------- DOM helpers ----------

/** el('tag', {class, testid, on: {click}, ...attrs}, ...children) builds an element. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'testid') e.dataset.testid = v;
    else if (k === 'text') e.textContent = v;
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k in e && typeof v !== 'string') e[k] = v; // properties: checked, disabled, value...
    else e.setAttribute(k, v === true ? '' : v);
  }
  append(e, ...children);
  return e;
}
function append(parent, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return parent;
}
/** Replaces the children of `node`, keeping keyboard focus on the element with the same data-key. */
function replace(node, ...children) {
  const active = document.activeElement;
  const key = active && node.contains(active) ? active.dataset.key : null;
  node.replaceChildren();
  append(node, ...children);
  if (key) {
    const again = node.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}
const $ = (sel, root = document) => root.querySelector(sel);

function time(iso) {
  if (!iso) return el('span', { class: 'muted', text: '–' });
  const d = new Date(iso);
  const shown = isNaN(d) ? iso : d.toLocaleString();
  return el('time', { datetime: iso, title: iso, text: shown });
}
function duration(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
const num = (v, digits = 0) => (v === null || v === undefined ? '–' : Number(v).toFixed(digits));
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const badge = (status) => el('span', { class: `badge badge-${String(status).replace(/[^a-z_]/gi, '')}`, testid: 'status-badge', text: status });
const traceId = (tp) => (typeof tp === 'string' && tp.split('-').length >= 4 ? tp.split('-')[1] : null);
const isUuid = (s) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);

/** A table in a horizontally scrolling wrapper; `head` = column names, rows = arrays of cells or <tr>. */
function table(caption, head, rows, testid, empty = 'Nothing here.') {
  const body = el('tbody', null, rows.map((r) => (r instanceof Node ? r : el('tr', null, r.map((c) => el('td', null, c))))));
  if (!rows.length) body.append(el('tr', null, el('td', { colspan: String(head.length), class: 'muted', text: empty })));
  return el('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption },
    el('table', { testid },
      el('caption', { class: 'visually-hidden', text: caption }),
      el('thead', null, el('tr', null, head.map((h) => el('th', { scope: 'col', text: h })))),
      body));
}

// ---------- alerts and API ----------

function showAlert(message) {
  const a = $('#alert');
  a.replaceChildren(el('span', { text: message }),
    el('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss', text: '×', on: { click: clearAlert } }));
  a.hidden = false;
}
function clearAlert() { const a = $('#alert'); a.hidden = true; a.replaceChildren(); }

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `request failed (HTTP ${status})`);
    this.status = status; this.code = err.code; this.body = body || {};
  }
}

/** Calls the API; 401 sends the browser to the sign-in page, other errors throw ApiError. */
async function api(url, { method = 'GET', body } = {}) {
  const headers = { 'x-warren-console': '1' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url, { method, credentials: 'same-origin', headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401) {
    location.href = '/console/login';
    throw new ApiError(401, { error: { code: 'unauthorized', message: 'Signed out: redirecting to the sign-in page' } });
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: { code: 'bad_response', message: text.slice(0, 300) } }; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}
const enc = encodeURIComponent;
const qs = (params) => {
  const p = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== '');
  return p.length ? '?' + p.map(([k, v]) => `${enc(k)}=${enc(v)}`).join('&') : '';
};

// ---------- dialogs ----------

/**
 * A modal confirmation (native <dialog>: focus is trapped; Escape cancels; focus returns).
 * opts: {title, text: [lines], confirm: label, danger, requireText: string to type, note: {label, required}}
 * Resolves {note} on confirm, null on cancel.
 */
function confirmDialog(opts) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const ok = el('button', { type: 'submit', class: opts.danger ? 'danger' : '', testid: 'confirm-ok', text: opts.confirm || 'Confirm' });
    const cancel = el('button', { type: 'button', class: 'secondary', testid: 'confirm-cancel', text: 'Cancel' });
    let typed = null, note = null;
    const fields = [];
    if (opts.requireText) {
      typed = el('input', { id: 'confirm-typed', type: 'text', autocomplete: 'off', spellcheck: 'false', testid: 'confirm-input' });
      fields.push(el('label', { for: 'confirm-typed' }, 'Type ', el('code', { text: opts.requireText }), ' to confirm'), typed);
    }
    if (opts.note) {
      note = el('textarea', { id: 'confirm-note', rows: '3', maxlength: '1000', testid: 'confirm-note', required: !!opts.note.required });
      fields.push(el('label', { for: 'confirm-note', text: opts.note.label }), note);
    }
    const update = () => {
      ok.disabled = (typed && typed.value.trim() !== opts.requireText) || (note && opts.note.required && !note.value.trim());
    };
    const form = el('form', { method: 'dialog' },
      el('h2', { id: 'dialog-title', text: opts.title }),
      el('div', { testid: 'confirm-text' }, (opts.text || []).map((t) => el('p', { text: t }))),
      fields,
      el('div', { class: 'buttons' }, cancel, ok));
    const dialog = el('dialog', { testid: 'confirm-dialog', 'aria-labelledby': 'dialog-title' }, form);
    let result = null;
    form.addEventListener('input', update);
    form.addEventListener('submit', (e) => {
      e.preventDefault(); update();
      if (ok.disabled) return;
      result = { note: note ? note.value.trim() : null };
      dialog.close();
    });
    cancel.addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    });
    update();
    document.body.append(dialog);
    dialog.showModal();
    (typed || note || cancel).focus();
  });
}

// ---------- operations (replay / purge with progress) ----------

const OP_VERB = { 'dlq.replay': 'Replayed', 'dlq.purge': 'Purged', 'failed_job.retry': 'Replayed' };

/** Shows op progress in `box` (moved / matched), polling every 500 ms until it is not running. */
async function followOperation(op, box) {
  const bar = el('progress', { max: '1', value: '0', testid: 'op-progress-bar' });
  const label = el('span', { testid: 'op-progress-text' });
  const result = el('p', { testid: 'op-result', 'aria-live': 'polite' });
  replace(box, el('div', { class: 'progress-row' }, bar, label), result);
  box.hidden = false;
  box.dataset.status = 'running';
  for (;;) {
    const matched = op.matched ?? 0, moved = op.moved ?? 0;
    bar.max = Math.max(matched, 1); bar.value = moved;
    label.textContent = `${moved} / ${matched}`;
    if (op.status !== 'running') break;
    await new Promise((r) => setTimeout(r, 500));
    try { op = await api(`/v1/console/operations/${enc(op.id)}`); } catch (e) { showAlert(e.message); }
  }
  const verb = OP_VERB[op.action] || 'Moved';
  result.textContent = op.status === 'done'
    ? `${verb} ${plural(op.moved ?? 0, 'message')}.`
    : `Operation ${op.status}: ${verb.toLowerCase()} ${plural(op.moved ?? 0, 'message')} of ${op.matched ?? 0}. ${op.error || ''}`;
  box.dataset.status = op.status;
  if (op.status === 'failed') showAlert(op.error || 'The operation failed.');
  return op;
}

// ---------- pages ----------
// A page is {nav, mount(main, arg)} where mount builds the page and returns a refresh()
// function; the router calls refresh() every 2 s while the page is shown.

const pages = {};

pages.overview = {
  nav: 'overview',
  mount(main) {
    const content = el('div');
    append(main, el('h1', { text: 'Overview' }), content);
    return async () => {
      const o = await api('/v1/console/overview');
      setOperator(o.operator);
      const s = o.sagas || {};
      const card = (title, value, testid, href) =>
        el('a', { class: 'card stat', href, testid }, el('span', { class: 'stat-title', text: title }),
          el('span', { class: 'stat-value', testid: `${testid}-value`, text: String(value ?? '–') }));
      const cards = el('div', { class: 'cards' },
        card('Dead letters', o.dead_letters, 'card-dead-letters', '#/dead-letters'),
        card('Failed jobs parked', o.failed_jobs_parked, 'card-failed-jobs', '#/dead-letters'),
        card('Sagas needing intervention', s.needs_intervention, 'card-needs-intervention', '#/interventions'),
        card('Open interventions', o.interventions_open, 'card-interventions', '#/interventions'),
        el('div', { class: 'card', testid: 'card-sagas' }, el('span', { class: 'stat-title', text: 'Sagas by state' }),
          el('dl', { class: 'states' }, Object.entries(s).map(([k, v]) => [el('dt', null, el('a', { href: `#/sagas?state=${k}`, text: k.replace(/_/g, ' ') })), el('dd', { text: String(v) })]))));
      const rows = (o.queues || []).map((q) => el('tr', { testid: 'queue-row', 'data-queue': q.queue },
        el('th', { scope: 'row' }, q.management_url ? el('a', { href: q.management_url, target: '_blank', rel: 'noopener', text: q.queue }) : q.queue),
        el('td', { class: 'num', text: num(q.ready) }), el('td', { class: 'num', text: num(q.unacked) }),
        el('td', { class: 'num', text: num(q.consumers) }),
        el('td', { class: 'num', text: num(q.rate_in, 1) }), el('td', { class: 'num', text: num(q.rate_out, 1) }),
        el('td', { class: 'num' }, q.parked ? el('a', { href: `#/dead-letters?queue=${enc(q.queue)}`, text: String(q.parked) }) : String(q.parked ?? '–'))));
      const g = o.links && o.links.grafana;
      const links = [];
      if (o.links && o.links.management) links.push(['RabbitMQ management', o.links.management]);
      if (g) for (const [k, label] of [['queues', 'Grafana: queues'], ['sagas', 'Grafana: sagas'], ['http', 'Grafana: HTTP'], ['process', 'Grafana: process']]) if (g[k]) links.push([label, g[k]]);
      replace(content, cards,
        o.management_error ? el('p', { class: 'warning', testid: 'management-error', text: `Management API unreachable: ${o.management_error}` }) : null,
        o.dlq_error ? el('p', { class: 'warning', testid: 'dlq-error', text: `Dead-letter counts unavailable: ${o.dlq_error}` }) : null,
        el('h2', { text: 'Queues' }),
        table('Queues', ['Queue', 'Ready', 'Unacked', 'Consumers', 'In /s', 'Out /s', 'Parked'], rows, 'queues-table', 'No queues.'),
        el('h2', { text: 'Dashboards' }),
        el('ul', { class: 'links', testid: 'links' }, links.map(([t, h]) => el('li', null, el('a', { href: h, target: '_blank', rel: 'noopener', text: t })))),
        el('h2', { text: 'API documents' }),
        el('ul', { class: 'links', testid: 'api-documents' },
          [['OpenAPI 3.1: the HTTP API', '/openapi.json', 'link-openapi'], ['AsyncAPI 3.0: the broker side', '/asyncapi.json', 'link-asyncapi']]
            .map(([t, h, id]) => el('li', null, el('a', { href: h, target: '_blank', rel: 'noopener', testid: id, text: t })))));
    };
  },
};

pages['dead-letters'] = {
  nav: 'dead-letters',
  mount(main, _arg, params) {
    const st = { queue: params.get('queue') || '', reason: '', older: '', selected: new Set(), open: new Set(), unfolded: new Set(), matched: 0, busy: false, jobStatus: 'parked' };
    const queueSel = el('select', { id: 'dl-queue', testid: 'dlq-queue' });
    const reasonSel = el('select', { id: 'dl-reason', testid: 'dlq-reason' },
      [['', 'any reason'], ['exhausted', 'exhausted (retries used up)'], ['invalid', 'invalid'], ['undecodable', 'undecodable']].map(([v, t]) => el('option', { value: v, text: t })));
    const older = el('input', { id: 'dl-older', type: 'text', placeholder: 'e.g. 10m', size: '8', pattern: '\\d+(s|m|h|d)', testid: 'dlq-older', 'aria-describedby': 'dl-older-hint' });
    const summary = el('p', { testid: 'dlq-summary', 'aria-live': 'polite' });
    const list = el('div', { testid: 'dlq-messages' });
    const btnSel = el('button', { type: 'button', testid: 'replay-selected' });
    const btnAll = el('button', { type: 'button', testid: 'replay-all' });
    const btnPurge = el('button', { type: 'button', class: 'danger', testid: 'purge-all' });
    const progress = el('div', { class: 'card op', testid: 'op-progress', hidden: true });
    const jobsSel = el('select', { id: 'fj-status', testid: 'failed-jobs-status' },
      ['parked', 'retried', 'purged', ''].map((v) => el('option', { value: v, text: v || 'any status' })));
    const jobs = el('div', { testid: 'failed-jobs' });
    const jobResult = el('p', { testid: 'failed-job-result', 'aria-live': 'polite' });

    const updateButtons = () => {
      const none = !st.queue || st.busy;
      btnSel.textContent = `Replay selected (${st.selected.size})`;
      btnSel.disabled = none || st.selected.size === 0;
      btnAll.textContent = `Replay all matching (${st.matched})`;
      btnAll.disabled = none || st.matched === 0;
      btnPurge.textContent = `Purge all matching (${st.matched})`;
      btnPurge.disabled = none || st.matched === 0;
    };
    const filters = () => ({ reason: reasonSel.value || null, older_than: older.value.trim() || null });
    const describe = (f) => [f.reason ? `reason “${f.reason}”` : null, f.older_than ? `parked longer ago than ${f.older_than}` : null].filter(Boolean).join(', ') || 'no filter: every parked message';

    async function run(action, ids) {
      const f = ids ? { reason: null, older_than: null } : filters();
      const req = { action, queue: st.queue, reason: f.reason, older_than: f.older_than, message_ids: ids };
      clearAlert();
      // Ask the server first (no confirm): it answers how many messages match right now.
      let count = ids ? ids.length : st.matched;
      try {
        const op = await api('/v1/console/operations', { method: 'POST', body: req });
        return followOperation(op.operation || op, progress).then(kick); // server did not require confirmation
      } catch (e) {
        if (e.code !== 'confirmation_required') { showAlert(e.message); return; }
        if (typeof e.body.matched === 'number') count = e.body.matched;
      }
      const what = ids ? 'the selected' : 'all matching';
      const text = action === 'replay'
        ? [`Replay ${what} ${plural(count, 'message')} from ${st.queue}.dead back to ${st.queue}?`, `Filter: ${ids ? 'selected messages' : describe(f)}.`, 'Each message is republished with its attempt counter reset to 1 and removed from the dead-letter queue once the broker confirmed it.']
        : [`Permanently delete ${what} ${plural(count, 'message')} from the dead-letter queue of ${st.queue}?`, `Filter: ${describe(f)}.`, 'This cannot be undone.'];
      const ok = await confirmDialog({
        title: action === 'replay' ? 'Replay messages' : 'Purge messages', text,
        confirm: action === 'replay' ? `Replay ${plural(count, 'message')}` : `Purge ${plural(count, 'message')}`,
        danger: action === 'purge', requireText: action === 'purge' ? st.queue : null,
      });
      if (!ok) return;
      st.busy = true; updateButtons();
      try {
        const res = await api('/v1/console/operations', { method: 'POST', body: { ...req, confirm: true } });
        await followOperation(res.operation || res, progress);
        st.selected.clear();
      } catch (e) { showAlert(e.message); } finally { st.busy = false; updateButtons(); kick(); }
    }
    btnSel.addEventListener('click', () => run('replay', [...st.selected]));
    btnAll.addEventListener('click', () => run('replay', null));
    btnPurge.addEventListener('click', () => run('purge', null));
    queueSel.addEventListener('change', () => { st.queue = queueSel.value; st.selected.clear(); kick(); });
    reasonSel.addEventListener('change', kick);
    older.addEventListener('change', () => { if (older.checkValidity()) kick(); else showAlert('Age filter: a number followed by s, m, h or d (e.g. 30s, 10m, 2h, 1d).'); });
    jobsSel.addEventListener('change', kick);

    append(main, el('h1', { text: 'Dead letters & failed jobs' }),
      el('div', { class: 'filters' },
        el('div', { class: 'field' }, el('label', { for: 'dl-queue', text: 'Queue' }), queueSel),
        el('div', { class: 'field' }, el('label', { for: 'dl-reason', text: 'Reason' }), reasonSel),
        el('div', { class: 'field' }, el('label', { for: 'dl-older', text: 'Older than' }), older,
          el('small', { id: 'dl-older-hint', class: 'muted', text: '30s, 10m, 2h, 1d' }))),
      summary, el('div', { class: 'buttons' }, btnSel, btnAll, btnPurge), progress, list,
      el('h2', { text: 'Failed jobs' }),
      el('div', { class: 'filters' }, el('div', { class: 'field' }, el('label', { for: 'fj-status', text: 'Status' }), jobsSel)),
      jobResult, jobs);
    updateButtons();

    function messageItem(m) {
      const id = m.message_id || '';
      const box = el('input', { type: 'checkbox', checked: st.selected.has(id), 'data-key': `sel-${id}`, 'aria-label': `Select message ${id}`, testid: 'dlq-select',
        on: { change: (e) => { if (e.target.checked) st.selected.add(id); else st.selected.delete(id); updateButtons(); } } });
      const details = el('details', { open: st.open.has(id), testid: 'dlq-details', on: { toggle: (e) => { if (e.target.open) st.open.add(id); else st.open.delete(id); } } },
        el('summary', { 'data-key': `sum-${id}` },
          el('span', { class: 'mtype', text: m.type || '(no type)' }), ' ',
          el('span', { class: 'badge', text: m.reason || 'unknown' }), ` attempt ${m.attempt ?? '?'} · `, time(m.failed_at),
          m.replayed_at ? [' · replayed ', time(m.replayed_at)] : null,
          el('span', { class: 'merror', text: m.error || '' })),
        el('dl', { class: 'meta' },
          el('dt', { text: 'Message id' }), el('dd', null, el('code', { text: id })),
          el('dt', { text: 'Original route' }), el('dd', { text: `${m.original_exchange || '?'} → ${m.original_routing_key || '?'}` })),
        el('h3', { text: 'Headers' }),
        table(`Headers of ${id}`, ['Header', 'Value'], Object.entries(m.headers || {}).map(([k, v]) =>
          el('tr', null, el('th', { scope: 'row' }, el('code', { text: k })), el('td', { class: 'wrap', text: typeof v === 'string' ? v : JSON.stringify(v) }))), 'dlq-headers', 'No headers.'),
        el('h3', { text: 'Body' }), bodyView(m.body, m.body_truncated, id));
      return el('li', { class: 'message', testid: 'dlq-message', 'data-message-id': id }, box, details);
    }
    function bodyView(body, truncated, id) {
      let text = body ?? '';
      try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON: shown as is */ }
      const lines = text.split('\n');
      const long = lines.length > 20 || text.length > 4000;
      const unfolded = st.unfolded.has(id);
      const pre = el('pre', { class: 'body', testid: 'dlq-body', text: long && !unfolded ? lines.slice(0, 20).join('\n').slice(0, 4000) + '\n…' : text });
      const toggle = long ? el('button', { type: 'button', class: 'secondary small', testid: 'body-toggle', 'data-key': `fold-${id}`, text: unfolded ? 'Fold' : `Show all (${lines.length} lines)`,
        on: { click: () => { if (st.unfolded.has(id)) st.unfolded.delete(id); else st.unfolded.add(id); const v = bodyView(body, truncated, id); toggleHost.replaceWith(v); v.querySelector('button').focus(); } } }) : null;
      const toggleHost = el('div', { class: 'body-view' }, pre, toggle, truncated ? el('p', { class: 'muted', text: 'The server truncated this body.' }) : null);
      return toggleHost;
    }
    function jobRow(j) {
      const retry = j.status === 'parked' ? el('button', { type: 'button', class: 'small', testid: 'failed-job-retry', 'data-key': `retry-${j.id}`, text: 'Retry',
        on: { click: async (e) => {
          e.target.disabled = true; clearAlert();
          try {
            const r = await api(`/v1/failed-jobs/${enc(j.id)}/retry`, { method: 'POST', body: {} });
            jobResult.textContent = `Replayed ${plural(r.replayed ?? 0, 'message')} of failed job ${j.job_name || j.id} to ${r.queue || j.queue}.`;
          } catch (err) { showAlert(err.message); e.target.disabled = false; }
          kick();
        } } }) : null;
      return el('tr', { testid: 'failed-job-row' }, el('td', null, time(j.failed_at)), el('td', { text: j.queue }), el('td', { text: j.job_name || '' }),
        el('td', { class: 'num', text: String(j.attempts ?? '') }), el('td', { text: j.reason || '' }), el('td', { class: 'wrap', text: j.error || '' }),
        el('td', null, badge(j.status)), el('td', null, retry));
    }

    let lastList = '', lastJobs = '';
    async function refresh() {
      const [dlq, fj] = await Promise.all([api('/v1/dlq'), api(`/v1/failed-jobs${qs({ status: jobsSel.value, limit: 100 })}`)]);
      const queues = dlq.queues || [];
      if (!st.queue && queues.length) st.queue = (queues.find((q) => q.parked > 0) || queues[0]).queue;
      const opts = queues.map((q) => el('option', { value: q.queue, selected: q.queue === st.queue, text: `${q.queue} (${q.parked} parked)` }));
      if (queueSel.options.length !== opts.length || [...queueSel.options].some((o, i) => o.textContent !== opts[i].textContent)) {
        replace(queueSel, opts);
        queueSel.value = st.queue;
      }
      const jobsKey = JSON.stringify(fj.failed_jobs);
      if (jobsKey !== lastJobs) {
        lastJobs = jobsKey;
        replace(jobs, table('Failed jobs', ['Failed at', 'Queue', 'Job', 'Attempts', 'Reason', 'Error', 'Status', 'Action'], (fj.failed_jobs || []).map(jobRow), 'failed-jobs-table', 'No failed jobs with this status.'));
      }
      if (!st.queue) { summary.textContent = 'No work queues.'; return; }
      const f = filters();
      const d = await api(`/v1/dlq/${enc(st.queue)}${qs({ limit: 50, reason: f.reason, older_than: f.older_than })}`);
      st.matched = d.matched ?? (d.messages || []).length;
      const ids = new Set((d.messages || []).map((m) => m.message_id));
      for (const id of st.selected) if (!ids.has(id)) st.selected.delete(id);
      summary.replaceChildren(el('strong', { testid: 'dlq-parked', text: String(d.parked ?? 0) }), ` parked in ${d.dead_queue || st.queue + '.dead'}; `,
        el('strong', { testid: 'dlq-matched', text: String(st.matched) }), ' matching the filter',
        (d.messages || []).length < st.matched ? `; showing the first ${d.messages.length}` : '', '.');
      summary.dataset.parked = String(d.parked ?? 0);
      updateButtons();
      const key = JSON.stringify(d.messages);
      if (key === lastList) return;
      lastList = key;
      const all = el('input', { type: 'checkbox', id: 'dl-all', 'data-key': 'sel-all', testid: 'dlq-select-all',
        on: { change: (e) => { for (const m of d.messages || []) { if (e.target.checked) st.selected.add(m.message_id); else st.selected.delete(m.message_id); } lastList = ''; kick(); } } });
      all.checked = (d.messages || []).length > 0 && (d.messages || []).every((m) => st.selected.has(m.message_id));
      replace(list, (d.messages || []).length
        ? [el('div', { class: 'select-all' }, all, el('label', { for: 'dl-all', text: ' Select all shown' })), el('ul', { class: 'messages' }, d.messages.map(messageItem))]
        : el('p', { class: 'muted', testid: 'dlq-empty', text: 'No parked messages match.' }));
    }
    return refresh;
  },
};

pages.subscriptions = {
  nav: 'subscriptions',
  mount(main) {
    const result = el('p', { testid: 'subscription-result', 'aria-live': 'polite' });
    const list = el('div');
    append(main, el('h1', { text: 'Subscriptions' }),
      el('p', { class: 'muted', text: 'HTTP subscriptions: how each stands in every worker, its queue, and pause or resume.' }),
      result, list);
    let last = '';
    const act = async (s, pause, btn) => {
      let body = {};
      if (pause) {
        const res = await confirmDialog({
          title: 'Pause subscription',
          text: [`Pause ${s.name}? Workers take no deliveries within about a second; its messages wait in ${s.queue}, keeping their attempts.`],
          confirm: 'Pause', note: { label: 'Reason (optional, shown here and in the audit log)' },
        });
        if (!res) return;
        body = { reason: res.note || null };
      }
      btn.disabled = true; clearAlert();
      try {
        const r = await api(`/v1/subscriptions/${enc(s.name)}/${pause ? 'pause' : 'resume'}`, { method: 'POST', body });
        result.textContent = `${s.name} ${r.paused ? 'paused' : 'resumed'}${r.changed ? '' : ' (it was already)'}.`;
      } catch (e) { showAlert(e.message); }
      last = ''; kick();
    };
    const workerItem = (w) => el('li', { testid: 'subscription-worker', 'data-instance': w.instance, 'data-breaker': w.breaker },
      el('span', { class: 'mono', text: w.instance }), ' ', badge(w.breaker),
      w.paused ? [' ', badge('paused')] : null, w.stale ? [' ', badge('stale')] : null,
      w.breaker === 'open' && w.breaker_until ? [' until ', time(w.breaker_until)] : null,
      w.retry_after_until ? [' deferred until ', time(w.retry_after_until)] : null,
      w.consecutive_failures ? ` · ${plural(w.consecutive_failures, 'failure')} in a row` : null);
    const row = (s) => {
      const pause = el('button', { type: 'button', class: 'small', testid: 'subscription-pause', 'data-key': `pause-${s.name}`, disabled: s.paused, text: 'Pause…' });
      const resume = el('button', { type: 'button', class: 'small secondary', testid: 'subscription-resume', 'data-key': `resume-${s.name}`, disabled: !s.paused, text: 'Resume' });
      pause.addEventListener('click', () => act(s, true, pause));
      resume.addEventListener('click', () => act(s, false, resume));
      const c = s.control;
      const err = s.last_error;
      return el('tr', { testid: 'subscription-row', 'data-subscription': s.name, 'data-state': s.state },
        el('th', { scope: 'row' }, el('strong', { text: s.name }), el('br'), el('small', { class: 'muted wrap', text: s.url })),
        el('td', { class: 'wrap' }, el('span', { testid: 'subscription-state' }, badge(s.state)),
          s.paused && c ? el('small', { class: 'muted', testid: 'subscription-paused-by' }, el('br'), `by ${c.by} `, time(c.at), c.reason ? ` · ${c.reason}` : '') : null),
        el('td', null, el('div', { class: 'buttons tight' }, pause, resume)),
        el('td', null, (s.workers || []).length ? el('ul', { class: 'plain' }, s.workers.map(workerItem)) : el('span', { class: 'muted', text: 'no worker reports' })),
        el('td', { class: 'wrap' }, err ? [el('span', { class: 'error-text', testid: 'subscription-last-error', text: err.error }), ' ', time(err.at)] : el('span', { class: 'muted', text: '–' })),
        el('td', { class: 'num', text: num(s.ready) }), el('td', { class: 'num', text: num(s.unacked) }),
        el('td', { class: 'num' }, el('a', { href: `#/dead-letters?queue=${enc(s.queue)}`, testid: 'subscription-dead-letters', title: `Dead letters of ${s.queue}`, text: String(s.parked ?? '–') })),
        el('td', { class: 'num', title: 'delivered (2xx) per second, from the workers; acked per second, from the broker', text: `${num(s.delivery_rate, 1)} (${num(s.rate_out, 1)})` }));
    };
    return async () => {
      const r = await api('/v1/subscriptions');
      const key = JSON.stringify(r);
      if (key === last) return;
      last = key;
      const subs = r.subscriptions || [];
      replace(list,
        r.management_error ? el('p', { class: 'warning', text: `Management API unreachable: ${r.management_error}` }) : null,
        r.status_error ? el('p', { class: 'warning', testid: 'status-error', text: `Workers' state unavailable: ${r.status_error}` }) : null,
        table('Subscriptions', ['Subscription', 'State', 'Actions', 'Workers (breaker)', 'Last error', 'Ready', 'Unacked', 'Parked', 'Delivered /s (acked)'],
          subs.map(row), 'subscriptions-table', 'No subscriptions in the settings.'));
    };
  },
};

const SAGA_STATES = ['running', 'compensating', 'completed', 'compensated', 'needs_intervention'];

pages.sagas = {
  nav: 'sagas',
  mount(main, _arg, params) {
    const input = el('input', { id: 'saga-q', type: 'search', required: true, testid: 'saga-search', autocomplete: 'off' });
    const state = el('select', { id: 'saga-state', testid: 'saga-state' }, ['', ...SAGA_STATES].map((s) => el('option', { value: s, selected: s === (params.get('state') || ''), text: s ? s.replace(/_/g, ' ') : 'any state' })));
    const list = el('div');
    const form = el('form', { class: 'filters', role: 'search', testid: 'saga-search-form' },
      el('div', { class: 'field grow' }, el('label', { for: 'saga-q', text: 'Saga id or order number' }), input),
      el('button', { type: 'submit', testid: 'saga-search-submit', text: 'Find' }));
    form.addEventListener('submit', async (e) => {
      e.preventDefault(); clearAlert();
      const q = input.value.trim();
      if (!q) return;
      if (isUuid(q)) { location.hash = `#/sagas/${q}`; return; }
      try {
        const r = await api(`/v1/orders/${enc(q)}`);
        if (r.saga && r.saga.id) location.hash = `#/sagas/${r.saga.id}`;
        else showAlert(`Order ${q} has no saga.`);
      } catch (err) { showAlert(err.status === 404 ? `No saga or order “${q}” found.` : err.message); }
    });
    state.addEventListener('change', kick);
    append(main, el('h1', { text: 'Sagas' }), form,
      el('div', { class: 'filters' }, el('div', { class: 'field' }, el('label', { for: 'saga-state', text: 'State' }), state)), list);
    async function refresh() {
      const r = await api(`/v1/sagas${qs({ state: state.value, limit: 50 })}`);
      replace(list, table('Recent sagas', ['Saga', 'Kind', 'Business key', 'Status', 'Step', 'Reason', 'Updated'], (r.sagas || []).map((s) => [
        el('a', { href: `#/sagas/${s.id}`, 'data-key': `saga-${s.id}`, class: 'mono', text: String(s.id).slice(0, 8) + '…', title: s.id }), s.kind, s.business_key, badge(s.status), String(s.step ?? ''), el('span', { class: 'wrap', text: s.reason || '' }), time(s.updated_at)]),
      'sagas-table', 'No sagas in this state.'));
    }
    return refresh;
  },
};

/** Interventions list (used on the Interventions page and the saga page) with Retry/Resolve. */
/** `withSaga`: a first column linking each row's saga (left out on a saga's own page). */
function interventionTable(items, onDone, caption, withSaga = true) {
  const act = async (iv, kind, btn) => {
    const retry = kind === 'retry';
    const res = await confirmDialog({
      title: retry ? 'Retry compensation' : 'Resolve intervention',
      text: retry
        ? [`Send the compensation ${iv.compensation || ''} of step ${iv.step} again for saga ${iv.saga_id}?`]
        : [`Mark the intervention of saga ${iv.saga_id} (step ${iv.step}) as resolved by hand?`, 'The saga is then considered compensated; nothing is sent.'],
      confirm: retry ? 'Retry compensation' : 'Resolve',
      note: { label: retry ? 'Note (optional, recorded in the audit log)' : 'Note (required): what did you do?', required: !retry },
    });
    if (!res) return;
    btn.disabled = true; clearAlert();
    try {
      const r = await api(`/v1/interventions/${enc(iv.id)}/${kind}`, { method: 'POST', body: { note: res.note || null } });
      const status = (r.saga && r.saga.status) || 'updated';
      onDone([
        retry ? `Compensation retried; saga is now ${status}. ` : `Intervention resolved; saga is now ${status}. `,
        el('a', { href: `#/sagas/${iv.saga_id}`, testid: 'intervention-saga-link', text: `Open saga ${String(iv.saga_id).slice(0, 8)}…` }),
      ]);
    } catch (e) { showAlert(e.message); btn.disabled = false; onDone(null); }
  };
  const rows = items.map((iv) => {
    const open = iv.status === 'open';
    const retry = el('button', { type: 'button', class: 'small', testid: 'intervention-retry', 'data-key': `retry-${iv.id}`, disabled: !open, text: 'Retry compensation' });
    const resolve = el('button', { type: 'button', class: 'small secondary', testid: 'intervention-resolve', 'data-key': `resolve-${iv.id}`, disabled: !open, text: 'Resolve…' });
    retry.addEventListener('click', () => act(iv, 'retry', retry));
    resolve.addEventListener('click', () => act(iv, 'resolve', resolve));
    return el('tr', { testid: 'intervention-row', 'data-saga-id': iv.saga_id, 'data-intervention-id': iv.id },
      withSaga ? el('td', null, el('a', { href: `#/sagas/${iv.saga_id}`, class: 'mono', title: iv.saga_id, text: String(iv.saga_id).slice(0, 8) + '…' })) : null,
      el('td', { text: `${iv.step ?? ''} ${iv.step_name || ''}`.trim() }), el('td', null, el('code', { text: iv.compensation || '' })), el('td', null, badge(iv.status)),
      el('td', { class: 'wrap', text: iv.reason || '' }), el('td', { class: 'wrap', text: iv.note || '' }), el('td', null, time(iv.created_at || iv.updated_at)),
      el('td', null, open ? el('div', { class: 'buttons tight' }, retry, resolve) : el('span', { class: 'muted', text: '–' })));
  });
  const heads = ['Step', 'Compensation', 'Status', 'Reason', 'Note', 'Opened', 'Actions'];
  return table(caption, withSaga ? ['Saga', ...heads] : heads, rows, 'interventions-table', 'No interventions.');
}

pages.saga = {
  nav: 'sagas',
  mount(main, id) {
    const head = el('div'), steps = el('div'), timeline = el('div'), ivs = el('div');
    const result = el('p', { testid: 'intervention-result', 'aria-live': 'polite' });
    append(main, el('p', null, el('a', { href: '#/sagas', text: '← All sagas' })), head,
      el('h2', { text: 'Steps' }), steps, el('h2', { text: 'Timeline' }), timeline,
      el('h2', { text: 'Interventions' }), result, ivs);
    let last = '', dataOpen = false;
    async function refresh() {
      let s;
      try { s = await api(`/v1/sagas/${enc(id)}`); } catch (e) {
        if (e.status === 404) { replace(head, el('h1', { text: 'Saga not found' }), el('p', { text: e.message })); return; }
        throw e;
      }
      const key = JSON.stringify(s);
      if (key === last) return;
      last = key;
      const tid = traceId(s.traceparent);
      const copy = tid ? el('button', { type: 'button', class: 'small secondary', testid: 'copy-trace', text: 'Copy',
        on: { click: async (e) => { try { await navigator.clipboard.writeText(tid); e.target.textContent = 'Copied'; } catch { getSelection().selectAllChildren($('[data-testid=trace-id]')); } } } }) : null;
      replace(head, el('h1', null, `Saga ${s.kind || ''} `, badge(s.status)),
        el('dl', { class: 'meta', testid: 'saga-meta' },
          el('dt', { text: 'Status' }), el('dd', { testid: 'saga-status', text: s.status }),
          el('dt', { text: 'Saga id' }), el('dd', null, el('code', { testid: 'saga-id', text: s.id })),
          el('dt', { text: 'Business key' }), el('dd', { testid: 'saga-business-key', text: s.business_key || '–' }),
          el('dt', { text: 'Current step' }), el('dd', { text: String(s.step ?? '–') }),
          el('dt', { text: 'Definition' }), el('dd', { testid: 'saga-definition',
            title: s.definition_hash || '',
            text: (s.definition_hash ? s.definition_hash.slice(0, 12) + '… ' : 'built in ')
              + (s.definition_current === false ? '(an older version, kept with the saga)' : '(current)') }),
          el('dt', { text: 'Trace id' }), el('dd', null, tid ? [el('code', { testid: 'trace-id', text: tid }), ' ', copy] : '–'),
          s.reason ? [el('dt', { text: 'Reason' }), el('dd', { class: 'wrap', text: s.reason })] : null,
          el('dt', { text: 'Created' }), el('dd', null, time(s.created_at)),
          el('dt', { text: 'Updated' }), el('dd', null, time(s.updated_at)),
          el('dt', { text: 'Finished' }), el('dd', null, time(s.finished_at)),
          s.deadline_at ? [el('dt', { text: 'Deadline' }), el('dd', null, time(s.deadline_at))] : null),
        s.payload !== undefined || s.state !== undefined
          ? el('details', { open: dataOpen, testid: 'saga-data', on: { toggle: (e) => { dataOpen = e.target.open; } } },
            el('summary', { 'data-key': 'saga-data', text: 'Payload and state' }),
            el('pre', { class: 'body', text: JSON.stringify({ payload: s.payload, state: s.state }, null, 2) }))
          : null);
      // A step's result (what its participant returned; later commands carry it as `results`).
      const resultOf = (r, testid) => (r === undefined || r === null ? '' : el('code', { class: 'wrap', testid, text: JSON.stringify(r) }));
      replace(steps, table('Steps', ['#', 'Name', 'Command', 'Compensation', 'Status', 'Result'], (s.steps || []).map((st) =>
        [String(st.step), st.name, el('code', { text: st.command || '' }), el('code', { text: st.compensation || '' }), badge(st.status), resultOf(st.result, 'step-result')]), 'steps-table', 'No steps.'));
      // Timeline: oldest first, with the time since the previous entry and, for a reply
      // (ok/failed), the time since its command was sent for the same step and action.
      let prev = null;
      const sent = {};
      const rows = (s.timeline || []).map((t) => {
        const at = Date.parse(t.at);
        const since = prev === null ? '' : '+' + duration(at - prev);
        prev = at;
        const k = `${t.step}/${t.action}`;
        let rtt = '';
        if (t.event === 'sent') sent[k] = at;
        else if (sent[k] !== undefined && t.event !== 'started') { rtt = duration(at - sent[k]); delete sent[k]; }
        return el('tr', { testid: 'timeline-row', 'data-event': t.event, 'data-action': t.action },
          el('td', null, time(t.at)), el('td', { text: `${t.step ?? ''} ${t.step_name || ''}`.trim() }), el('td', { text: t.action || '' }),
          el('td', null, el('span', { class: `event event-${String(t.event).replace(/[^a-z_]/gi, '')}`, text: t.event })),
          el('td', null, el('code', { text: t.command || '' })), el('td', { class: 'wrap', text: t.reason || '' }),
          el('td', null, resultOf(t.result, 'timeline-result')),
          el('td', { class: 'num', text: since }), el('td', { class: 'num', text: rtt }));
      });
      replace(timeline, table('Timeline', ['Time', 'Step', 'Action', 'Event', 'Command', 'Reason', 'Result', 'Since previous', 'Command → reply'], rows, 'timeline', 'No entries.'));
      replace(ivs, interventionTable(s.interventions || [], (msg) => { if (msg) replace(result, msg); last = ''; kick(); }, 'Interventions of this saga', false));
    }
    return refresh;
  },
};

pages.interventions = {
  nav: 'interventions',
  mount(main) {
    const all = el('input', { type: 'checkbox', id: 'iv-all', testid: 'include-resolved' });
    const result = el('p', { testid: 'intervention-result', 'aria-live': 'polite' });
    const list = el('div');
    all.addEventListener('change', () => { last = ''; kick(); });
    append(main, el('h1', { text: 'Interventions' }),
      el('p', { class: 'muted', text: 'Sagas whose compensation failed and that wait for an operator.' }),
      el('div', { class: 'filters' }, el('div', { class: 'check' }, all, el('label', { for: 'iv-all', text: ' Include resolved' }))),
      result, list);
    let last = '';
    async function refresh() {
      const r = await api(`/v1/interventions${qs({ all: all.checked ? 'true' : null, limit: 50 })}`);
      const key = JSON.stringify(r.interventions);
      if (key === last) return;
      last = key;
      replace(list, interventionTable(r.interventions || [], (msg) => { if (msg) replace(result, msg); last = ''; kick(); }, 'Interventions'));
    }
    return refresh;
  },
};

/** The note of an audit entry, else a summary of its filter (reason, age, selected ids). */
function detailText(d) {
  if (!d || typeof d !== 'object') return null;
  if (d.note) return d.note;
  const parts = [];
  if (d.reason) parts.push(`reason ${d.reason}`);
  if (d.older_than) parts.push(`older than ${d.older_than}`);
  if (Array.isArray(d.message_ids)) parts.push(`${plural(d.message_ids.length, 'selected message')}`);
  return parts.join(', ') || null;
}

pages.audit = {
  nav: 'audit',
  mount(main) {
    const list = el('div');
    append(main, el('h1', { text: 'Audit log' }), el('p', { class: 'muted', text: 'Operator actions, newest first.' }), list);
    return async () => {
      const r = await api('/v1/console/audit?limit=100');
      replace(list, table('Audit log', ['When', 'Who', 'What', 'Target', 'Status', 'Moved / matched', 'Note / error'], (r.actions || []).map((a) => {
        const note = detailText(a.detail);
        const sagaId = a.detail && typeof a.detail.saga_id === 'string' ? a.detail.saga_id : null;
        return el('tr', { testid: 'audit-row', 'data-action': a.action, 'data-actor': a.actor },
          el('td', null, time(a.created_at)), el('td', { text: a.actor }), el('td', null, el('code', { text: a.action })),
          el('td', { class: 'wrap' }, a.target || '', sagaId ? [' (saga ', el('a', { href: `#/sagas/${sagaId}`, class: 'mono', title: sagaId, text: sagaId.slice(0, 8) + '…' }), ')'] : null),
          el('td', null, badge(a.status)),
          el('td', { class: 'num', text: a.matched === null || a.matched === undefined ? (a.moved ? String(a.moved) : '–') : `${a.moved ?? 0} / ${a.matched}` }),
          el('td', { class: 'wrap' }, note ? el('span', { text: note }) : null, a.error ? el('span', { class: 'error-text', text: (note ? ' · ' : '') + a.error }) : null));
      }), 'audit-table', 'No operator actions yet.'));
    };
  },
};

// ---------- router and polling ----------

let current = { refresh: null, gen: 0 };
let operatorShown = false;
function setOperator(name) {
  if (!name) return;
  operatorShown = true;
  $('[data-testid=operator]').textContent = `signed in as ${name}`;
}

async function tick(gen) {
  if (gen !== current.gen || !current.refresh) return;
  try {
    await current.refresh();
    if (gen !== current.gen) return;
    const u = $('[data-testid=updated]');
    u.textContent = `updated ${new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false })}`;
    u.dataset.at = String(Date.now());
  } catch (e) {
    if (gen === current.gen && e.status !== 401) showAlert(e.message);
  }
}

/** Refreshes the current page now (after a user action); errors go to the alert region. */
function kick() { return tick(current.gen); }

function route(event) {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query] = raw.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  let page = pages.overview, arg = null;
  if (parts[0] === 'sagas' && parts[1]) { page = pages.saga; arg = parts[1]; }
  else if (parts[0] && pages[parts[0]] && parts[0] !== 'saga') page = pages[parts[0]];
  for (const a of document.querySelectorAll('nav a[data-route]')) {
    if (a.dataset.route === page.nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  clearAlert();
  const main = $('#main');
  main.replaceChildren();
  main.dataset.page = page === pages.saga ? 'saga' : (parts[0] && pages[parts[0]] ? parts[0] : 'overview');
  const gen = ++current.gen;
  current.refresh = page.mount(main, arg, params);
  if (event) main.focus({ preventScroll: true }); // after navigation, keyboard focus starts at the content
  const h1 = main.querySelector('h1');
  document.title = `${h1 ? h1.textContent : 'warren'} · warren console`;
  tick(gen).then(() => {
    const h = main.querySelector('h1');
    if (h) document.title = `${h.textContent} · warren console`;
  });
}

function startApp() {
  // The skip link focuses <main> without touching the hash (the hash is the route).
  $('[data-testid=skip-link]').addEventListener('click', (e) => { e.preventDefault(); $('#main').focus(); });
  window.addEventListener('hashchange', route);
  route();
  // Poll every 2 s; skip while a dialog is open, text is selected or the tab is hidden.
  setInterval(() => {
    if (document.hidden || document.querySelector('dialog[open]')) return;
    const sel = getSelection();
    if (sel && !sel.isCollapsed && sel.toString().trim()) return;
    tick(current.gen);
  }, 2000);
  if (!operatorShown) api('/v1/console/overview').then((o) => setOperator(o.operator)).catch(() => {});
}

function startLogin() {
  const err = new URLSearchParams(location.search).get('error');
  if (err) { const a = $('#alert'); a.textContent = err; a.hidden = false; }
  const op = $('#operator');
  try {
    op.value = localStorage.getItem('warren-operator') || '';
    $('form').addEventListener('submit', () => localStorage.setItem('warren-operator', op.value.trim()));
  } catch { /* storage unavailable */ }
  $('#token').focus();
}

if (document.body.dataset.page === 'login') startLogin(); else startApp();
