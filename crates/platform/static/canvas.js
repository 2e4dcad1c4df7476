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

  function duration(ms) {
    if (ms <= 0) return 'any moment now';
    const s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${String(sec).padStart(2, '0')}s`;
    return `${sec}s`;
  }

  function localTime(iso) {
    const t = new Date(iso);
    return isNaN(t) ? iso : t.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }

  function tick() {
    const now = Date.now();
    for (const t of $$('time.deadline')) {
      const at = Date.parse(t.getAttribute('datetime'));
      if (isNaN(at)) continue;
      t.textContent = duration(at - now);
      t.title = localTime(t.getAttribute('datetime'));
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
        countdown.textContent = `${deadlineLabel} ${duration(left)}.`;
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

  let boardTimer = null;
  async function refreshBoard() {
    const active = document.activeElement;
    const focusKey = active && boardEl.contains(active)
      ? (active.dataset.open ? `[data-open="${active.dataset.open}"]` : (active.dataset.action && active.dataset.id ? `[data-action="${active.dataset.action}"][data-id="${active.dataset.id}"]` : null))
      : null;
    try {
      boardEl.innerHTML = await fragment('/canvas/board');
    } catch (e) {
      toast(`The board could not be refreshed: ${e.message}`, { kind: 'error' });
      return;
    }
    markSelected();
    if (focusKey) { const f = $(focusKey, boardEl); if (f) f.focus(); }
    tick();
  }
  function scheduleBoard() {
    clearTimeout(boardTimer);
    boardTimer = setTimeout(refreshBoard, 250);
  }

  function markSelected() {
    const id = currentId();
    for (const c of $$('.card', boardEl)) c.classList.toggle('selected', c.dataset.wsId === id);
  }

  // ---- Panel -----------------------------------------------------------

  const panel = () => $('#panel');
  const currentId = () => (panel() && !panelHost.hidden ? panel().dataset.id : null);
  const currentTab = () => (panel() ? panel().dataset.tab : 'details');

  function setUrl() {
    const id = currentId();
    const url = id ? `/canvas?ws=${id}&tab=${currentTab()}` : '/canvas';
    history.replaceState(null, '', url);
  }

  async function openPanel(id, tab = 'details', { focus = false } = {}) {
    let html;
    try {
      html = await fragment(`/canvas/panel/${encodeURIComponent(id)}?tab=${tab}`);
    } catch (e) {
      toast(`The workspace could not be opened: ${e.message}`, { kind: 'error' });
      return;
    }
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
    if (name === 'chat') loadChat();
    setUrl();
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
    renderActivity();
    if (currentTab() === 'chat') loadChat();
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
    if (!log) return;
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

  function syncDelete() {
    delSubmit.disabled = !deleting || delInput.value !== deleting.name;
    delDialog.classList.toggle('erase', delErase.checked);
  }

  function openDelete() {
    const p = panel();
    if (!p) return;
    deleting = { id: p.dataset.id, name: p.dataset.name, descendants: Number(p.dataset.descendants || 0), mode: p.dataset.mode };
    for (const n of $$('[data-name]', delDialog)) n.textContent = deleting.name;
    const note = $('[data-children-note]', delDialog);
    note.textContent = deleting.descendants
      ? `Its ${deleting.descendants} descendant workspace${deleting.descendants === 1 ? '' : 's'} ${deleting.descendants === 1 ? 'is' : 'are'} deleted with it, with the same choice for their saved data.`
      : '';
    $('[data-ephemeral-note]', delDialog).hidden = deleting.mode !== 'nokeep';
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
        kind: 'ok', actions: [undo], deadline: res.restore_until, deadlineLabel: 'Kept for',
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
    const parent = $('#new-parent');
    parent.replaceChildren(el('option', { value: '' }, 'None (top of the org tree)'));
    for (const c of $$('.card[data-ws-id]', boardEl)) {
      parent.append(el('option', { value: c.dataset.wsId }, c.dataset.wsName));
    }
    const open = currentId();
    if (open && $(`option[value="${open}"]`, parent)) parent.value = open;
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
    if (ev.key === 'Escape' && currentId() && !document.querySelector('dialog[open]')) closePanel();
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

  if (panel()) initPanel();
  markSelected();
  tick();
  setInterval(tick, 1000);
  // Sizes and deadlines change without events: a slow refresh keeps them true.
  setInterval(() => { if (!document.hidden) refreshBoard(); }, 15000);
  connect();
})();
