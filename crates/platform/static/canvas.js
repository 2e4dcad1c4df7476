// holdfast canvas: a little plain JavaScript over server-rendered pages.
// Every change goes through the JSON API with the session cookie; the
// server re-renders the board and the side panel as HTML fragments.
'use strict';

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const boardEl = $('#board');
  const panelHost = $('#panel-host');
  const toasts = $('#toasts');
  const liveEl = $('#live');
  const STATUSES = ['provisioning', 'online', 'offline', 'degraded', 'failed', 'paused', 'hibernated', 'removed'];
  // Status changes seen since the page opened, per workspace (for Activity).
  const activity = new Map();

  // ---- API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || `the server answered ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(method, url, body, headers = {}) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, { error: 'The server could not be reached. Check that holdfast is running.' });
    }
    if (res.status === 401) {
      location.href = '/canvas/login';
      throw new ApiError(401, { error: 'Your session has ended. Sign in again.' });
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }

  async function fragment(url) {
    const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'text/html' } });
    if (res.redirected && new URL(res.url).pathname === '/canvas/login') {
      location.href = '/canvas/login';
      throw new Error('signed out');
    }
    const html = await res.text();
    if (!res.ok) {
      const doc = new DOMParser().parseFromString(html, 'text/html');
      throw new Error(doc.body.textContent.trim() || `the server answered ${res.status}`);
    }
    return html;
  }

  // ---- Small pieces -----------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  // "45 s", "4 min", "5 h 3 min", "6 days": how long until a deadline.
  function duration(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.ceil(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(s / 3600), rm = Math.floor((s % 3600) / 60);
    if (h < 48) return rm ? `${h} h ${rm} min` : `${h} h`;
    return `${Math.floor(s / 86400)} days`;
  }
  // How long since: "40 s", "12 min", "3 h 5 min", "2 days".
  function since(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
    return `${Math.floor(h / 24)} days`;
  }
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  // "8 Dec 14:00" (with the year when it is not this year), local time.
  function dateShort(ms) {
    const t = new Date(ms);
    if (isNaN(t)) return '';
    const hh = String(t.getHours()).padStart(2, '0'), mm = String(t.getMinutes()).padStart(2, '0');
    const year = t.getFullYear() !== new Date().getFullYear() ? ` ${t.getFullYear()}` : '';
    return `${t.getDate()} ${MONTHS[t.getMonth()]}${year} ${hh}:${mm}`;
  }

  function localTime(iso) {
    const t = new Date(iso);
    return isNaN(t) ? iso : t.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }

  // The words of a countdown: retained data is "kept until" a date, data
  // about to be erased is "erased in" a duration; a deadline that has
  // passed says what happens next, never "any moment now".
  function countdownText(kind, at, now) {
    const left = at - now;
    if (kind === 'erase') {
      return left > 0
        ? ['Data erased in', duration(left)]
        : ['Erase due: the sweeper erases the data at its next pass', ''];
    }
    return left > 0
      ? ['Data kept until', dateShort(at)]
      : ['Retention over: the sweeper erases the data at its next pass', ''];
  }

  function tick() {
    const now = Date.now();
    for (const t of $$('time.deadline')) {
      const at = Date.parse(t.getAttribute('datetime'));
      if (isNaN(at)) continue;
      const [label, value] = countdownText(t.dataset.kind, at, now);
      const l = t.parentElement && $('[data-cd-label]', t.parentElement);
      if (l && l.textContent !== label) l.textContent = label;
      if (t.textContent !== value) t.textContent = value;
      t.title = localTime(t.getAttribute('datetime'));
    }
    for (const t of $$('time.since')) {
      const at = Date.parse(t.getAttribute('datetime'));
      if (isNaN(at)) continue;
      const v = since(now - at);
      if (t.textContent !== v) t.textContent = v;
      if (!t.title) t.title = `since ${localTime(t.getAttribute('datetime'))}`;
    }
    for (const t of $$('time.reltime:not([data-done])')) {
      t.textContent = localTime(t.getAttribute('datetime'));
      t.dataset.done = '1';
    }
    for (const f of toastDeadlines) f(now);
  }

  function toast(message, { kind = 'info', actions = [], deadline = null, deadlineLabel = '', timeout = 8000 } = {}) {
    const text = el('span', { class: 'toast-text' }, message);
    const item = el('div', { class: `toast ${kind}` }, text);
    const close = () => {
      item.remove();
      toastDeadlines.delete(onTick);
    };
    let timer = null;
    const buttons = actions.map(a => el('button', {
      type: 'button',
      onclick: async (ev) => {
        ev.currentTarget.disabled = true;
        try { await a.run(); close(); } catch (e) { ev.currentTarget.disabled = false; toast(e.message, { kind: 'error' }); }
      },
    }, a.label));
    let countdown = null;
    if (deadline) {
      countdown = el('span', { class: 'toast-countdown' });
      item.append(' ', countdown);
    }
    for (const b of buttons) item.append(b);
    item.append(el('button', { type: 'button', class: 'ghost icon', 'aria-label': 'Dismiss', onclick: close }, '✕'));
    const onTick = (now) => {
      if (!countdown) return;
      const left = Date.parse(deadline) - now;
      if (left > 0) {
        countdown.textContent = deadlineLabel === 'Kept until'
          ? `Kept until ${dateShort(Date.parse(deadline))}.`
          : `${deadlineLabel} ${duration(left)}.`;
      } else {
        countdown.textContent = 'The grace is over.';
        for (const b of buttons) b.remove();
        toastDeadlines.delete(onTick);
        setTimeout(close, 5000);
      }
    };
    if (deadline) { toastDeadlines.add(onTick); onTick(Date.now()); }
    toasts.append(item);
    if (!actions.length && !deadline) timer = setTimeout(close, kind === 'error' ? 12000 : timeout);
    return { close, item, timer };
  }
  const toastDeadlines = new Set();

  // ---- Board -----------------------------------------------------------

  // The board's search, filters, sort and page, as the query of
  // /canvas/board (and of the page's URL).
  const tools = $('#board-tools');
  let boardPage = Number(new URLSearchParams(location.search).get('page') || 0);
  function boardQuery() {
    const q = new URLSearchParams();
    if (tools) {
      for (const [k, v] of new FormData(tools)) if (String(v).trim()) q.set(k, String(v).trim());
      if (q.get('sort') === 'tree') q.delete('sort');
    }
    if (boardPage > 0) q.set('page', String(boardPage));
    return q;
  }

  let boardBusy = false, boardAgain = false;
  async function refreshBoard() {
    if (boardBusy) { boardAgain = true; return; }
    boardBusy = true;
    try {
      const active = document.activeElement;
      const focusKey = active && boardEl.contains(active)
        ? (active.dataset.open ? `[data-open="${active.dataset.open}"]` : (active.dataset.action && active.dataset.id ? `[data-action="${active.dataset.action}"][data-id="${active.dataset.id}"]` : null))
        : null;
      let html;
      try {
        html = await fragment(`/canvas/board?${boardQuery()}`);
      } catch (e) {
        toast(`The board could not be refreshed: ${e.message}`, { kind: 'error' });
        return;
      }
      boardEl.innerHTML = html;
      markSelected();
      if (focusKey) { const f = $(focusKey, boardEl); if (f) f.focus(); }
      tick();
    } finally {
      boardBusy = false;
      if (boardAgain) { boardAgain = false; scheduleBoard(); }
    }
  }
  // Live events are batched: however many arrive, the board is re-read at
  // most once a second (the first soon, the rest together).
  let boardTimer = null, boardLast = 0;
  const BOARD_BATCH_MS = 1000;
  function scheduleBoard() {
    if (boardTimer) return;
    const wait = Math.max(150, BOARD_BATCH_MS - (Date.now() - boardLast));
    boardTimer = setTimeout(() => {
      boardTimer = null;
      boardLast = Date.now();
      refreshBoard();
    }, wait);
  }

  function syncBoardUrl() {
    const q = boardQuery();
    const id = currentId();
    if (id) { q.set('ws', id); q.set('tab', currentTab()); }
    const s = q.toString();
    history.replaceState(null, '', s ? `/canvas?${s}` : '/canvas');
  }

  if (tools) {
    let typing = null;
    tools.addEventListener('input', (ev) => {
      boardPage = 0;
      clearTimeout(typing);
      typing = setTimeout(() => { syncBoardUrl(); refreshBoard(); }, ev.target.type === 'search' ? 200 : 0);
    });
    tools.addEventListener('submit', (ev) => { ev.preventDefault(); boardPage = 0; syncBoardUrl(); refreshBoard(); });
  }
  boardEl.addEventListener('click', (ev) => {
    const a = ev.target.closest('.pager a[href], a[data-clear-filters]');
    if (!a || ev.metaKey || ev.ctrlKey || ev.shiftKey) return;
    ev.preventDefault();
    if (a.hasAttribute('data-clear-filters')) {
      tools.reset();
      for (const i of $$('input, select', tools)) { if (i.tagName === 'SELECT') i.selectedIndex = i.name === 'sort' ? 0 : 0; else i.value = ''; }
      boardPage = 0;
    } else {
      boardPage = Number(new URL(a.href).searchParams.get('page') || 0);
    }
    syncBoardUrl();
    refreshBoard().then(() => { const h = $('#ws-heading'); if (h) { h.tabIndex = -1; h.focus(); } });
  });

  function markSelected() {
    const id = currentId();
    for (const c of $$('.card', boardEl)) c.classList.toggle('selected', c.dataset.wsId === id);
  }

  // ---- Panel -----------------------------------------------------------

  const panel = () => $('#panel');
  const currentId = () => (panel() && !panelHost.hidden ? panel().dataset.id : null);
  const currentTab = () => (panel() ? panel().dataset.tab : 'details');

  function setUrl() { syncBoardUrl(); }

  async function openPanel(id, tab = 'details', { focus = false } = {}) {
    let html;
    try {
      html = await fragment(`/canvas/panel/${encodeURIComponent(id)}?tab=${tab}`);
    } catch (e) {
      toast(`The workspace could not be opened: ${e.message}`, { kind: 'error' });
      return;
    }
    stopFollow();
    panelHost.innerHTML = html;
    panelHost.hidden = false;
    document.body.classList.add('panel-open');
    initPanel();
    setUrl();
    markSelected();
    tick();
    if (focus) $('#panel-title').setAttribute('tabindex', '-1'), $('#panel-title').focus();
  }

  function closePanel() {
    stopFollow();
    const id = currentId();
    panelHost.hidden = true;
    panelHost.innerHTML = '';
    document.body.classList.remove('panel-open');
    setUrl();
    markSelected();
    const link = id && $(`[data-open="${id}"]`, boardEl);
    if (link) link.focus();
  }

  // Refreshes the panel's read-only parts (status, Details, Activity),
  // leaving Config edits and the chat as they are.
  async function refreshPanelParts() {
    const id = currentId();
    if (!id) return;
    let html;
    try { html = await fragment(`/canvas/panel/${id}?tab=${currentTab()}`); } catch (e) { return; }
    const doc = new DOMParser().parseFromString(html, 'text/html');
    const next = $('#panel', doc);
    if (!next || next.dataset.id !== id) return;
    if (next.dataset.status === 'removed' || panel().dataset.status === 'removed') {
      // Deleted or restored meanwhile: the whole panel changes.
      return openPanel(id, currentTab());
    }
    for (const sel of ['#panel-status', '#panel-details']) {
      const a = $(sel), b = $(sel, doc);
      if (a && b) a.replaceWith(b);
    }
    const audit = $('#panel-activity [aria-label="Audit events"]');
    const nextAudit = $('#panel-activity [aria-label="Audit events"]', doc);
    if (audit && nextAudit) audit.replaceWith(nextAudit);
    panel().dataset.status = next.dataset.status;
    panel().dataset.descendants = next.dataset.descendants;
    renderActivity();
    tick();
  }

  function selectTab(name, { focus = false } = {}) {
    const p = panel();
    if (!p) return;
    p.dataset.tab = name;
    for (const t of $$('[role="tab"]', p)) {
      const on = t.dataset.tab === name;
      t.setAttribute('aria-selected', on ? 'true' : 'false');
      t.tabIndex = on ? 0 : -1;
      $(`#${t.getAttribute('aria-controls')}`).hidden = !on;
      if (on && focus) t.focus();
    }
    if (name !== 'logs') stopFollow();
    loadTab(name);
    setUrl();
  }

  function loadTab(name) {
    if (name === 'chat') loadChat();
    else if (name === 'logs') loadLogs();
    else if (name === 'files') loadFiles('');
    else if (name === 'snapshots') loadSnapshots();
  }

  function initPanel() {
    const p = panel();
    if (!p) return;
    const tabs = $$('[role="tab"]', p);
    tabs.forEach((t, i) => {
      t.addEventListener('click', () => selectTab(t.dataset.tab));
      t.addEventListener('keydown', (ev) => {
        let j = null;
        if (ev.key === 'ArrowRight') j = (i + 1) % tabs.length;
        else if (ev.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
        else if (ev.key === 'Home') j = 0;
        else if (ev.key === 'End') j = tabs.length - 1;
        if (j !== null) { ev.preventDefault(); selectTab(tabs[j].dataset.tab, { focus: true }); }
      });
    });
    initRuntimeToggles(p);
    const cfg = $('#config-form', p);
    if (cfg) cfg.addEventListener('submit', onConfigSubmit);
    const chat = $('#chat-form', p);
    if (chat) {
      chat.addEventListener('submit', onChatSubmit);
      $('#chat-text', chat).addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); chat.requestSubmit(); }
      });
    }
    const follow = $('#log-follow', p);
    if (follow) follow.addEventListener('change', () => (follow.checked ? startFollow() : (stopFollow(), loadLogs())));
    const reload = $('#log-reload', p);
    if (reload) reload.addEventListener('click', () => { if (follow && follow.checked) startFollow(); else loadLogs(); });
    const snapForm = $('#snap-form', p);
    if (snapForm) snapForm.addEventListener('submit', onSnapSubmit);
    renderActivity();
    loadTab(currentTab());
  }

  function initRuntimeToggles(root) {
    for (const sel of $$('[data-runtime-select]', root)) {
      const form = sel.form;
      const field = $('[data-command-field]', form);
      const sync = () => { field.hidden = sel.value !== 'command'; };
      sel.addEventListener('change', sync);
      sync();
    }
  }

  // Splits a command line like a shell would for simple quoting.
  function splitCommand(text) {
    const out = [];
    let cur = '', inWord = false, quote = null;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quote) {
        if (c === quote) quote = null;
        else if (c === '\\' && quote === '"' && i + 1 < text.length) cur += text[++i];
        else cur += c;
      } else if (c === "'" || c === '"') { quote = c; inWord = true; }
      else if (c === '\\' && i + 1 < text.length) { cur += text[++i]; inWord = true; }
      else if (/\s/.test(c)) { if (inWord) { out.push(cur); cur = ''; inWord = false; } }
      else { cur += c; inWord = true; }
    }
    if (quote) throw new Error('The command has an unclosed quote.');
    if (inWord) out.push(cur);
    return out;
  }

  function runtimeFrom(form) {
    const runtime = programFrom(form);
    // The image is kept (or changed) with the program: a save that left it
    // out would drop it.
    const image = form.elements.image ? form.elements.image.value.trim() : '';
    if (image) runtime.image = image;
    return runtime;
  }

  function programFrom(form) {
    if (form.elements.runtime.value === 'command') {
      const argv = splitCommand(form.elements.command.value.trim());
      if (!argv.length) throw new Error('Enter the command to run, or choose the built-in runtime.');
      return { command: argv };
    }
    const template = form.elements.template ? form.elements.template.value : 'holdfast-runtime';
    return { template: template || 'holdfast-runtime' };
  }

  // Auto is an omitted field: compute carries data_persistence only when chosen.
  function computeFrom(form, volumeSize) {
    const compute = {};
    const saved = form.elements.saved.value;
    if (saved === 'persist' || saved === 'ephemeral') compute.data_persistence = saved;
    if (volumeSize) compute.volume = { size_gb: Number(volumeSize) };
    return compute;
  }

  function showFormError(form, message) {
    const e = $('[data-form-error]', form) || $('[role="alert"]', form);
    if (!e) return toast(message, { kind: 'error' });
    e.textContent = message || '';
    e.hidden = !message;
  }

  async function onConfigSubmit(ev) {
    ev.preventDefault();
    const form = ev.currentTarget;
    const id = form.dataset.id;
    const restart = ev.submitter && ev.submitter.dataset.submit === 'restart';
    const buttons = $$('button', form);
    showFormError(form, '');
    let body;
    try {
      body = {
        runtime: runtimeFrom(form),
        tier: Number(form.elements.tier.value),
        compute: computeFrom(form, form.dataset.volumeSize),
      };
    } catch (e) { return showFormError(form, e.message); }
    buttons.forEach(b => { b.disabled = true; });
    $('[data-form-status]', form).textContent = restart ? 'Saving and restarting…' : 'Saving…';
    try {
      await api('PATCH', `/workspaces/${id}`, body);
      if (restart) await api('POST', `/workspaces/${id}/restart`);
    } catch (e) {
      buttons.forEach(b => { b.disabled = false; });
      $('[data-form-status]', form).textContent = '';
      return showFormError(form, e.message);
    }
    await openPanel(id, 'config');
    refreshBoard();
    const status = $('#config-form [data-form-status]');
    if (status) status.textContent = restart ? 'Saved and restarted.' : 'Saved. The change applies at the next start.';
  }

  // ---- Chat ------------------------------------------------------------

  function renderChat(messages) {
    const log = $('#chat-log');
    if (!log) return;
    log.replaceChildren();
    if (!messages.length) {
      log.append(el('li', { class: 'muted empty-line' }, 'No messages yet. Say something: the runtime remembers it.'));
      return;
    }
    for (const m of messages) {
      const mine = m.role === 'user';
      log.append(el('li', { class: `msg ${mine ? 'mine' : 'theirs'}` },
        el('span', { class: 'who' }, mine ? 'You' : 'Workspace'),
        el('p', {}, m.text || ''),
        m.at ? el('time', { datetime: m.at, class: 'small muted' }, localTime(m.at)) : null));
    }
    log.scrollTop = log.scrollHeight;
  }

  async function loadChat() {
    const log = $('#chat-log');
    if (!log) return; // a command has no chat: the panel says so already
    try {
      const data = await api('GET', `/workspaces/${log.dataset.id}/messages`);
      renderChat((data && data.messages) || []);
    } catch (e) {
      log.replaceChildren(el('li', { class: 'alert', role: 'alert' }, `The history could not be read: ${e.message}`));
    }
  }

  async function onChatSubmit(ev) {
    ev.preventDefault();
    const form = ev.currentTarget;
    const input = form.elements.text;
    const text = input.value.trim();
    if (!text) return;
    const button = $('button[type="submit"]', form);
    button.disabled = true;
    showFormError(form, '');
    try {
      const data = await api('POST', `/workspaces/${form.dataset.id}/messages`, { text });
      input.value = '';
      renderChat((data && data.history) || []);
    } catch (e) {
      showFormError(form, `Not sent: ${e.message}`);
    } finally {
      button.disabled = false;
      input.focus();
    }
  }

  // ---- Logs ------------------------------------------------------------

  const MAX_LOG_LINES = 5000;
  let follower = null;
  function stopFollow() {
    if (follower) { follower.close(); follower = null; }
  }
  function logStatus(text) { const s = $('#log-status'); if (s) s.textContent = text; }

  async function loadLogs() {
    const view = $('#log-view');
    if (!view) return;
    const follow = $('#log-follow');
    if (follow && follow.checked) return startFollow();
    logStatus('Reading the log…');
    let res;
    try {
      res = await fetch(`/workspaces/${view.dataset.id}/logs?tail=65536`, { credentials: 'same-origin' });
    } catch (e) { return logStatus('The server could not be reached.'); }
    if (res.status === 401) { location.href = '/canvas/login'; return; }
    const text = await res.text();
    if (!res.ok) {
      let msg = text;
      try { msg = JSON.parse(text).error; } catch (e) { /* plain text */ }
      view.textContent = '';
      return logStatus(`No log to show: ${msg}`);
    }
    view.textContent = text;
    view.scrollTop = view.scrollHeight;
    logStatus(text ? 'The last 64 KiB of the log. Turn on Follow live to see new lines as they are written.' : 'The log is empty so far.');
  }

  function startFollow() {
    const view = $('#log-view');
    if (!view) return;
    stopFollow();
    view.textContent = '';
    let lines = 0;
    const es = new EventSource(`/workspaces/${view.dataset.id}/logs?follow=true&tail=65536`);
    follower = es;
    logStatus('Following the log…');
    es.addEventListener('log', (m) => {
      const stick = view.scrollTop + view.clientHeight >= view.scrollHeight - 24;
      view.append(`${m.data}\n`);
      lines++;
      if (lines > MAX_LOG_LINES) {
        // Keep the view bounded: drop the oldest text.
        const t = view.textContent;
        view.textContent = t.slice(t.indexOf('\n', t.length / 4) + 1);
        lines = Math.floor(lines * 0.75);
      }
      if (stick) view.scrollTop = view.scrollHeight;
    });
    es.onopen = () => logStatus('Following the log: new lines appear as they are written.');
    es.onerror = () => {
      if (follower !== es) return;
      logStatus('The log stream was interrupted; reconnecting…');
    };
  }

  // ---- Files -------------------------------------------------------------

  function humanBytes(n) {
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let v = Math.max(0, Number(n) || 0), u = 0;
    while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
    return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
  }

  async function loadFiles(path) {
    const table = $('#files-table');
    if (!table) return;
    const id = table.dataset.id;
    const status = $('#files-status');
    status.textContent = 'Reading the folder…';
    let listing;
    try {
      listing = await api('GET', `/workspaces/${id}/data/files?path=${encodeURIComponent(path)}`);
    } catch (e) {
      table.hidden = true;
      status.textContent = `Nothing to browse: ${e.message}`;
      return;
    }
    // Breadcrumbs: the data dir, then each folder down to this one.
    const crumbs = $('#files-crumbs');
    const parts = listing.path ? listing.path.split('/') : [];
    const trail = [el('button', { type: 'button', class: 'link', 'data-dir': '' }, 'data')];
    parts.forEach((p, i) => {
      trail.push(' / ');
      const to = parts.slice(0, i + 1).join('/');
      trail.push(i === parts.length - 1
        ? el('span', { 'aria-current': 'location' }, p)
        : el('button', { type: 'button', class: 'link', 'data-dir': to }, p));
    });
    crumbs.replaceChildren(...trail);
    const body = $('tbody', table);
    body.replaceChildren();
    for (const e of listing.entries) {
      let name, action = '';
      if (e.kind === 'dir') {
        name = el('button', { type: 'button', class: 'link', 'data-dir': e.path }, `${e.name}/`);
      } else if (e.kind === 'symlink') {
        name = el('span', {}, e.name, el('span', { class: 'muted small' }, ` → ${e.target || '?'} (link, not followed)`));
      } else {
        name = el('span', {}, e.name, e.kind === 'other' ? el('span', { class: 'muted small' }, ' (special file)') : null);
      }
      if (e.kind === 'file' || e.kind === 'hardlink') {
        action = el('a', {
          href: `/workspaces/${id}/data/file?path=${encodeURIComponent(e.path)}`,
          download: e.name, 'aria-label': `Download ${e.name}`,
        }, 'Download');
      }
      body.append(el('tr', {}, el('td', {}, name), el('td', { class: 'num' }, e.kind === 'file' ? humanBytes(e.size) : ''), el('td', {}, action)));
    }
    table.hidden = listing.entries.length === 0;
    status.textContent = listing.entries.length === 0
      ? 'This folder is empty.'
      : `${listing.entries.length} entr${listing.entries.length === 1 ? 'y' : 'ies'}${listing.truncated ? ' (only the first 1000 are listed)' : ''}.`;
  }

  document.addEventListener('click', (ev) => {
    const b = ev.target.closest('#tp-files button[data-dir]');
    if (!b) return;
    loadFiles(b.dataset.dir).then(() => {
      const first = $('#files-table tbody button, #files-table tbody a') || $('#files-crumbs button');
      if (first) first.focus();
    });
  });

  // ---- Snapshots ---------------------------------------------------------

  // A yes/no question in a dialog; resolves true when confirmed.
  const confirmDialog = $('#confirm-dialog');
  function ask({ title, text, ok, danger = false }) {
    return new Promise((resolve) => {
      $('#confirm-title').textContent = title;
      $('#confirm-text').textContent = text;
      const button = $('#confirm-ok');
      button.textContent = ok;
      button.className = danger ? 'danger' : 'primary';
      let answered = false;
      const done = (v) => { if (!answered) { answered = true; resolve(v); } };
      confirmDialog.onclose = () => done(confirmDialog.returnValue === 'ok');
      confirmDialog.returnValue = '';
      $('#confirm-form').onsubmit = (ev) => { ev.preventDefault(); confirmDialog.close('ok'); };
      confirmDialog.showModal();
      $('[data-close]', confirmDialog).focus();
    });
  }
  $('[data-close]', confirmDialog).addEventListener('click', () => confirmDialog.close(''));

  function snapStatus(text) { const s = $('#snap-status'); if (s) s.textContent = text; }

  async function loadSnapshots() {
    const table = $('#snap-table');
    if (!table) return;
    let list;
    try {
      list = await api('GET', `/workspaces/${table.dataset.id}/snapshots`);
    } catch (e) {
      table.hidden = true;
      return snapStatus(`Snapshots could not be read: ${e.message}`);
    }
    list = Array.isArray(list) ? list : [];
    list.sort((a, b) => (a.at < b.at ? 1 : -1));
    const body = $('tbody', table);
    body.replaceChildren();
    const removed = table.dataset.removed === '1';
    for (const sn of list) {
      const when = Date.parse(sn.at);
      const actions = el('td', { class: 'snap-actions' });
      if (!removed && sn.state !== 'erase_pending') {
        actions.append(el('button', { type: 'button', 'data-snap': 'rollback', 'data-sid': sn.id, 'data-at': sn.at, 'aria-label': `Roll back to ${sn.label || dateShort(when)}` }, 'Roll back'));
      }
      actions.append(el('a', { class: 'button-link', href: `/snapshots/${sn.id}/export`, download: '', 'aria-label': `Export ${sn.label || dateShort(when)}` }, 'Export'));
      actions.append(el('button', { type: 'button', class: 'danger-text', 'data-snap': 'delete', 'data-sid': sn.id, 'data-at': sn.at, 'aria-label': `Delete ${sn.label || dateShort(when)}` }, 'Delete'));
      const note = [];
      if (sn.consistency === 'crash_consistent') note.push('best effort: the freeze ran out');
      if (sn.state && sn.state !== 'ready') note.push(sn.state.replace(/_/g, ' '));
      body.append(el('tr', { 'data-snap-id': sn.id },
        el('td', {}, el('time', { datetime: sn.at, title: localTime(sn.at) }, dateShort(when))),
        el('td', {}, sn.label || '', note.length ? el('span', { class: 'muted small' }, ` (${note.join(', ')})`) : null),
        el('td', { class: 'num', title: `${sn.files} files; this snapshot added ${humanBytes(sn.new_bytes)} to the store` }, `${humanBytes(sn.bytes)}`,
          el('span', { class: 'muted small' }, ` · +${humanBytes(sn.new_bytes)} new`)),
        actions));
    }
    table.hidden = list.length === 0;
    snapStatus(list.length ? `${list.length} snapshot${list.length === 1 ? '' : 's'}.` : 'No snapshots yet. Take one to be able to roll back to this point.');
  }

  async function onSnapSubmit(ev) {
    ev.preventDefault();
    const form = ev.currentTarget;
    const button = $('button[type="submit"]', form);
    const label = form.elements.label.value.trim();
    button.disabled = true;
    snapStatus('Taking a snapshot…');
    try {
      const sn = await api('POST', `/workspaces/${form.dataset.id}/snapshots`, label ? { label } : {});
      form.reset();
      await loadSnapshots();
      snapStatus(`Snapshot taken: ${sn.files} files, ${humanBytes(sn.bytes)} (${humanBytes(sn.new_bytes)} new).`);
    } catch (e) {
      snapStatus(`No snapshot taken: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-snap]');
    if (!b) return;
    const table = $('#snap-table');
    const { sid, at } = b.dataset;
    const name = table.dataset.name;
    const when = dateShort(Date.parse(at));
    if (b.dataset.snap === 'rollback') {
      const yes = await ask({
        title: `Roll back ${name}?`,
        text: `Its data becomes the snapshot of ${when}, and it restarts. The current data is kept first as a snapshot labelled before-rollback, so nothing is lost.`,
        ok: 'Roll back',
      });
      if (!yes) return;
      snapStatus('Rolling back…');
      try {
        await api('POST', `/workspaces/${table.dataset.id}/rollback`, { snapshot_id: sid });
        toast(`Rolled ${name} back to ${when}. The data before is kept as the snapshot before-rollback.`, { kind: 'ok' });
        await loadSnapshots();
        refreshBoard();
        refreshPanelParts();
      } catch (e) { snapStatus(`Not rolled back: ${e.message}`); }
    } else if (b.dataset.snap === 'delete') {
      const yes = await ask({
        title: 'Delete this snapshot?',
        text: `The snapshot of ${name} taken ${when} is deleted for good. The workspace's current data and its other snapshots are not touched.`,
        ok: 'Delete snapshot', danger: true,
      });
      if (!yes) return;
      if (!/^[\x20-\x7e]*$/.test(name)) return snapStatus('This name cannot be sent in the confirmation header; delete the snapshot with the CLI (holdfast snap rm).');
      try {
        await api('DELETE', `/snapshots/${sid}`, undefined, { 'X-Confirm-Name': name });
        await loadSnapshots();
        snapStatus(`Deleted the snapshot of ${when}.`);
      } catch (e) { snapStatus(`Not deleted: ${e.message}`); }
    }
  });

  // ---- Copy buttons ------------------------------------------------------

  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-copy]');
    if (!b) return;
    const text = b.dataset.copy;
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const t = el('textarea', { 'aria-hidden': 'true', class: 'sr-only' });
      t.value = text;
      document.body.append(t);
      t.select();
      document.execCommand('copy');
      t.remove();
    }
    const was = b.textContent;
    b.textContent = 'Copied';
    setTimeout(() => { b.textContent = was; }, 1500);
  });

  // ---- Activity --------------------------------------------------------

  function renderActivity() {
    const list = $('#live-activity');
    if (!list) return;
    const items = activity.get(list.dataset.id) || [];
    if (!items.length) return;
    list.replaceChildren(...items.slice().reverse().map(ev => el('li', {},
      el('time', { datetime: ev.at }, localTime(ev.at)), ' ',
      el('strong', {}, ev.type.replace(/^WORKSPACE_/, '').toLowerCase()))));
  }

  // ---- Lifecycle actions -------------------------------------------------

  async function restore(id, name) {
    await api('POST', `/workspaces/${id}/restore`);
    toast(`Restored ${name} with its saved data.`, { kind: 'ok' });
    await refreshBoard();
    if (currentId() === id) await openPanel(id, currentTab());
  }

  const verbs = { restart: 'Restarting', pause: 'Pausing', resume: 'Resuming', wake: 'Waking' };
  async function lifecycle(action, id) {
    await api('POST', `/workspaces/${id}/${action}`);
    toast(`${verbs[action]} ${panel() ? panel().dataset.name : 'the workspace'}. Saved data is untouched.`, { kind: 'ok' });
    await refreshBoard();
    await refreshPanelParts();
  }

  // ---- Delete dialog -----------------------------------------------------

  const delDialog = $('#delete-dialog');
  const delForm = $('#delete-form');
  const delInput = $('#delete-confirm');
  const delErase = $('#delete-erase');
  const delSubmit = $('#delete-submit');
  let deleting = null;

  // "7 days", "5 min": a grace for people.
  function graceText(ms) {
    const s = Math.round(ms / 1000);
    if (s % 86400 === 0) return `${s / 86400} day${s === 86400 ? '' : 's'}`;
    if (s % 3600 === 0) return `${s / 3600} hour${s === 3600 ? '' : 's'}`;
    if (s % 60 === 0) return `${s / 60} min`;
    return `${s} s`;
  }

  // What this delete will do, for this workspace's mode and the state of
  // the erase checkbox: one paragraph, with the exact date.
  function deleteOutcome(d, erase) {
    const now = Date.now();
    const who = d.descendants ? `${d.name} and its descendants` : d.name;
    if (d.mode === 'nokeep' || d.dataState === 'none' || d.dataState === 'erased') {
      const why = d.mode === 'nokeep' ? "it is set to Don't keep, so every start began empty"
        : d.dataState === 'erased' ? 'its data was erased already' : 'it has not saved any data yet';
      return `${d.name} keeps no saved data (${why}). Deleting it stops it and removes it from the board; there is nothing to restore or erase${d.descendants ? ' for it (its descendants follow their own mode)' : ''}.`;
    }
    const size = d.size && d.size !== '0 B' ? ` (${d.size})` : '';
    if (d.hold) {
      return erase
        ? `${d.name} is on legal hold: a delete that erases is refused while the hold lasts. Turn this off to delete it and keep its data.`
        : `Its saved data${size} is kept while the legal hold lasts: no grace runs out until an admin releases the hold. Restore in Recently deleted brings ${d.name} back with it.`;
    }
    if (erase) {
      const when = d.eraseMs ? ` after ${dateShort(now + d.eraseMs)} (the erase grace, ${graceText(d.eraseMs)})` : ' after the erase grace (set on the control plane)';
      return `The saved data of ${who}${size} is marked for erasure and erased for good${when}. Until then, Undo cancels the erase and restores ${d.name} with its data.`;
    }
    const until = d.retentionMs ? ` until ${dateShort(now + d.retentionMs)} (the retention grace, ${graceText(d.retentionMs)})` : ' for the retention grace (set on the control plane)';
    const auto = d.mode === 'auto' ? ' (Auto keeps it here)' : '';
    return `The saved data of ${who}${size} is kept${until}${auto}. Until then, Restore in Recently deleted brings ${d.name} back with all of it; after that it is erased.`;
  }

  function syncDelete() {
    delSubmit.disabled = !deleting || delInput.value !== deleting.name;
    delDialog.classList.toggle('erase', delErase.checked);
    if (deleting) $('#delete-outcome').textContent = deleteOutcome(deleting, delErase.checked);
  }

  function openDelete() {
    const p = panel();
    if (!p) return;
    deleting = {
      id: p.dataset.id, name: p.dataset.name, descendants: Number(p.dataset.descendants || 0), mode: p.dataset.mode,
      dataState: p.dataset.dataState, size: p.dataset.size, hold: p.dataset.hold === '1',
      retentionMs: Number(p.dataset.retentionMs || 0), eraseMs: Number(p.dataset.eraseMs || 0),
    };
    for (const n of $$('[data-name]', delDialog)) n.textContent = deleting.name;
    const note = $('[data-children-note]', delDialog);
    note.textContent = deleting.descendants
      ? `Its ${deleting.descendants} descendant workspace${deleting.descendants === 1 ? '' : 's'} ${deleting.descendants === 1 ? 'is' : 'are'} deleted with it, with the same choice for their saved data.`
      : '';
    delErase.checked = false;
    delInput.value = '';
    showFormError(delForm, '');
    syncDelete();
    delDialog.showModal();
    delInput.focus();
  }

  delInput.addEventListener('input', syncDelete);
  delErase.addEventListener('change', syncDelete);
  $('[data-close]', delDialog).addEventListener('click', () => delDialog.close());
  delForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!deleting || delInput.value !== deleting.name) return syncDelete();
    // Header values are bytes; a name outside ASCII cannot be sent as typed.
    if (!/^[\x20-\x7e]*$/.test(deleting.name)) {
      return showFormError(delForm, 'This name has characters a browser cannot send in the confirmation header; delete it with the CLI (holdfast ws delete).');
    }
    const { id, name, descendants } = deleting;
    const erase = delErase.checked;
    const params = new URLSearchParams();
    if (erase) params.set('erase_data', 'true');
    if (descendants) params.set('confirm', 'true');
    delSubmit.disabled = true;
    let res;
    try {
      const q = params.toString();
      res = await api('DELETE', `/workspaces/${id}${q ? `?${q}` : ''}`, undefined, { 'X-Confirm-Name': name });
    } catch (e) {
      syncDelete();
      return showFormError(delForm, e.message);
    }
    delDialog.close();
    if (currentId() === id) closePanel();
    await refreshBoard();
    const undo = { label: 'Undo', run: () => restore(id, name) };
    const more = res.cascade_deleted > 1 ? ` and ${res.cascade_deleted - 1} more` : '';
    if (res.data === 'erase_pending') {
      toast(`Deleted ${name}${more}. Its saved data will be erased.`, {
        kind: 'warn', actions: [undo], deadline: res.restore_until, deadlineLabel: 'Erased in',
      });
    } else if (res.data === 'retained') {
      toast(`Deleted ${name}${more}. Its saved data is kept; restore it from Recently deleted.`, {
        kind: 'ok', actions: [undo], deadline: res.restore_until, deadlineLabel: 'Kept until',
      });
    } else {
      toast(`Deleted ${name}${more}. It kept no saved data.`, { kind: 'ok' });
    }
  });

  // ---- New workspace dialog ------------------------------------------------

  const newDialog = $('#new-dialog');
  const newForm = $('#new-form');
  initRuntimeToggles(newForm);
  $('#new-ws-button').addEventListener('click', () => {
    newForm.reset();
    showFormError(newForm, '');
    $('#new-parent').value = '';
    const parent = $('#new-parent');
    parent.replaceChildren(el('option', { value: '' }, 'None (top of the org tree)'));
    // Every live workspace can be the parent, not only this page's; none is
    // chosen for you (the open one included).
    api('GET', '/workspaces').then((list) => {
      const keep = parent.value;
      const names = (list || []).filter(w => w.status !== 'removed')
        .sort((a, b) => a.name.localeCompare(b.name));
      parent.append(...names.map(w => el('option', { value: w.id }, w.name)));
      parent.value = keep;
    }).catch(() => {
      for (const c of $$('.card[data-ws-id]', boardEl)) parent.append(el('option', { value: c.dataset.wsId }, c.dataset.wsName));
    });
    $('[data-command-field]', newForm).hidden = true;
    newDialog.showModal();
    $('#new-name').focus();
  });
  $('[data-close]', newDialog).addEventListener('click', () => newDialog.close());
  newForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = newForm.elements;
    const name = f.name.value.trim();
    if (!name) return showFormError(newForm, 'Give the workspace a name.');
    let body;
    try {
      body = { name, tier: Number(f.tier.value), runtime: runtimeFrom(newForm), compute: computeFrom(newForm, null) };
    } catch (e) { return showFormError(newForm, e.message); }
    if (f.role.value.trim()) body.role = f.role.value.trim();
    if (f.parent.value) body.parent_id = f.parent.value;
    const submit = $('button[type="submit"]', newForm);
    submit.disabled = true;
    submit.textContent = 'Creating…';
    try {
      const ws = await api('POST', '/workspaces', body);
      newDialog.close();
      toast(`Created ${ws.name}.`, { kind: 'ok' });
      await refreshBoard();
      await openPanel(ws.id, 'details');
    } catch (e) {
      showFormError(newForm, e.message);
    } finally {
      submit.disabled = false;
      submit.textContent = 'Create';
    }
  });

  // ---- Import dialog ---------------------------------------------------------

  const impDialog = $('#import-dialog');
  const impForm = $('#import-form');
  const impText = $('#import-text');
  const impReconcile = $('#import-reconcile');
  const impPlan = $('#import-plan');
  const impApply = $('#import-apply');
  const impPreview = $('#import-preview');
  // The document and mode the shown plan was computed for: Apply sends
  // exactly those, and is disabled once either changes.
  let previewed = null;

  async function importDoc(doc, reconcile, dryRun) {
    const q = [];
    if (reconcile) q.push('mode=reconcile');
    if (dryRun) q.push('dry_run=true');
    const url = `/org/import${q.length ? `?${q.join('&')}` : ''}`;
    let res;
    try {
      res = await fetch(url, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { Accept: 'application/json', 'Content-Type': 'application/yaml' },
        body: doc,
      });
    } catch (e) {
      throw new ApiError(0, { error: 'The server could not be reached. Check that holdfast is running.' });
    }
    if (res.status === 401) {
      location.href = '/canvas/login';
      throw new ApiError(401, { error: 'Your session has ended. Sign in again.' });
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }

  function showPlan(plan) {
    const items = $('[data-plan-items]', impPlan);
    items.replaceChildren();
    for (const c of plan.created) items.append(el('li', { class: 'create' }, `+ create ${c.path}`));
    for (const u of plan.updated) items.append(el('li', { class: 'update' }, `~ update ${u.path} (${u.fields.join(', ')})`));
    for (const r of plan.removed) {
      const kept = r.data === 'retained' ? 'saved data kept' : 'no saved data';
      items.append(el('li', { class: 'remove' }, `- remove ${r.path} (${kept})`));
    }
    const changes = plan.created.length + plan.updated.length + plan.removed.length;
    $('[data-plan-summary]', impPlan).textContent = changes
      ? `${plan.created.length} to create, ${plan.updated.length} to change, ${plan.removed.length} to remove, ${plan.unchanged} unchanged. Nothing has changed yet.`
      : `Nothing to do: all ${plan.unchanged} workspaces are already as the document says.`;
    $('[data-plan-keep]', impPlan).hidden = plan.removed.length === 0;
    impPlan.hidden = false;
  }

  function invalidatePreview() {
    previewed = null;
    impApply.disabled = true;
    impPlan.hidden = true;
  }

  $('#import-button').addEventListener('click', () => {
    impForm.reset();
    showFormError(impForm, '');
    invalidatePreview();
    impDialog.showModal();
    impText.focus();
  });
  $('[data-close]', impDialog).addEventListener('click', () => impDialog.close());
  impText.addEventListener('input', invalidatePreview);
  impReconcile.addEventListener('change', invalidatePreview);
  impPreview.addEventListener('click', async () => {
    const doc = impText.value;
    if (!doc.trim()) return showFormError(impForm, 'Paste a YAML document first.');
    showFormError(impForm, '');
    invalidatePreview();
    impPreview.disabled = true;
    try {
      const plan = await importDoc(doc, impReconcile.checked, true);
      showPlan(plan);
      previewed = { doc, reconcile: impReconcile.checked };
      impApply.disabled = plan.created.length + plan.updated.length + plan.removed.length === 0;
    } catch (e) {
      showFormError(impForm, e.message);
    } finally {
      impPreview.disabled = false;
    }
  });
  impForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!previewed) return;
    impApply.disabled = true;
    impApply.textContent = 'Applying…';
    try {
      const done = await importDoc(previewed.doc, previewed.reconcile, false);
      impDialog.close();
      const kept = done.removed.length ? ' Removed workspaces keep their saved data.' : '';
      toast(`Imported: ${done.created.length} created, ${done.updated.length} changed, ${done.removed.length} removed.${kept}`, { kind: 'ok' });
      await refreshBoard();
    } catch (e) {
      showFormError(impForm, e.message);
      impApply.disabled = false;
    } finally {
      impApply.textContent = 'Apply';
    }
  });

  // ---- Clicks ------------------------------------------------------------

  document.addEventListener('click', async (ev) => {
    const open = ev.target.closest('[data-open]');
    if (open && !ev.metaKey && !ev.ctrlKey && !ev.shiftKey) {
      ev.preventDefault();
      return openPanel(open.dataset.open, 'details', { focus: true });
    }
    if (ev.target.closest('[data-close-panel]')) return closePanel();
    const btn = ev.target.closest('button[data-action]');
    if (!btn) return;
    const { action, id, name } = btn.dataset;
    if (action === 'delete') return openDelete();
    btn.disabled = true;
    try {
      if (action === 'restore') await restore(id, name);
      else await lifecycle(action, id);
    } catch (e) {
      toast(e.message, { kind: 'error' });
    } finally {
      if (btn.isConnected) btn.disabled = false;
    }
  });

  document.addEventListener('keydown', (ev) => {
    if (document.querySelector('dialog[open]')) return;
    const typing = ev.target.closest && ev.target.closest('input, textarea, select');
    if (ev.key === 'Escape' && currentId()) { closePanel(); return; }
    // "/" jumps to the search, as on most dashboards.
    if (ev.key === '/' && !typing && tools) { ev.preventDefault(); $('#f-q').focus(); return; }
    // Arrow keys move between the cards' links; Home and End to the ends.
    const link = ev.target.closest && ev.target.closest('#board .card a.ws-link');
    if (!link) return;
    const links = $$('.card a.ws-link', boardEl);
    const i = links.indexOf(link);
    let j = null;
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowRight') j = Math.min(links.length - 1, i + 1);
    else if (ev.key === 'ArrowUp' || ev.key === 'ArrowLeft') j = Math.max(0, i - 1);
    else if (ev.key === 'Home') j = 0;
    else if (ev.key === 'End') j = links.length - 1;
    if (j !== null) { ev.preventDefault(); links[j].focus(); }
  });

  // ---- Live status ---------------------------------------------------------

  function connect() {
    const es = new EventSource('/events');
    es.onopen = () => { liveEl.textContent = 'Live'; liveEl.className = 'live on'; };
    es.onerror = () => { liveEl.textContent = 'Reconnecting…'; liveEl.className = 'live off'; };
    const onEvent = (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch (e) { return; }
      const list = activity.get(ev.workspace_id) || [];
      list.push(ev);
      activity.set(ev.workspace_id, list.slice(-100));
      scheduleBoard();
      if (currentId() === ev.workspace_id) refreshPanelParts();
    };
    for (const s of STATUSES) es.addEventListener(`WORKSPACE_${s.toUpperCase()}`, onEvent);
    es.onmessage = onEvent;
  }

  // The drawer starts under the top bar, whatever its height.
  const topbar = $('.topbar');
  const sizeTopbar = () => document.documentElement.style.setProperty('--topbar-h', `${topbar.offsetHeight}px`);
  if (topbar) { sizeTopbar(); window.addEventListener('resize', sizeTopbar); }

  if (panel()) initPanel();
  markSelected();
  tick();
  setInterval(tick, 1000);
  // Sizes and deadlines change without events: a slow refresh keeps them true.
  setInterval(() => { if (!document.hidden) refreshBoard(); }, 15000);
  connect();
})();
