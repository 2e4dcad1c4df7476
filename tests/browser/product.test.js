// Browser tests of what a newcomer tripped over on the canvas (each friction
// checked), the board's search, filters, sort and pages, the workspace
// page's Logs, Files and Snapshots tabs, keyboard-only use and axe-core.
// Each test starts its own `holdfast serve` and drives Debian's Chromium.
'use strict';

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startServer, launchBrowser, signedIn, screenshot, boxOf, axeSerious } = require('./helpers');

let browser;
let server;
let context;

const SLEEP = { command: ['sh', '-c', 'exec sleep infinity'] };

before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });
beforeEach(async () => {
  server = await startServer(['--erase-grace', '2m', '--usage-interval', '1s']);
});
afterEach(async () => {
  if (context) await context.close();
  context = null;
  if (server) await server.stop();
  server = null;
});

async function page1280(opts) {
  const s = await signedIn(browser, server, opts);
  context = s.context;
  return s.page;
}

async function openWorkspace(page, name) {
  await page.locator(`.card[data-ws-name="${name}"] a.ws-link`).click();
  await page.getByRole('heading', { name, exact: true, level: 2 }).waitFor();
}

const cardNames = (page) => page.locator('#board .card').evaluateAll(cs => cs.map(c => c.dataset.wsName));

test('chat: a command workspace says at once that it has no chat, and never asks the runtime', async () => {
  await server.api('POST', '/workspaces', { name: 'worker', runtime: SLEEP });
  const page = await page1280();
  const asked = [];
  page.on('request', r => { if (r.url().includes('/messages')) asked.push(r.url()); });
  await openWorkspace(page, 'worker');
  await page.getByRole('tab', { name: 'Chat' }).click();
  const chat = page.getByRole('tabpanel', { name: 'Chat' });
  // At once: well within a second, no spinner, no 30 s wait.
  await chat.getByText('which has no chat').waitFor({ timeout: 1000 });
  assert.equal(await chat.getByText('Loading history').count(), 0);
  assert.equal(await chat.getByLabel('Message').count(), 0, 'no message box for a runtime that cannot answer');
  assert.deepEqual(asked, [], 'the canvas did not call the messages API');
});

test('countdowns read right: "Data erased in 2 min", "Data kept until 9 Dec 14:00", never "any moment now"', async () => {
  const keep = await server.api('POST', '/workspaces', { name: 'kept', compute: { data_persistence: 'persist' } });
  const gone = await server.api('POST', '/workspaces', { name: 'doomed', compute: { data_persistence: 'persist' } });
  await server.waitOnline(keep.id);
  await server.waitOnline(gone.id);
  await server.api('DELETE', `/workspaces/${keep.id}`, undefined, { 'X-Confirm-Name': 'kept' });
  const del = await server.api('DELETE', `/workspaces/${gone.id}?erase_data=true`, undefined, { 'X-Confirm-Name': 'doomed' });
  assert.equal(del.data, 'erase_pending');
  const page = await page1280();
  const kept = page.locator('.deleted-row', { hasText: 'kept' }).locator('.countdown');
  const doomed = page.locator('.deleted-row', { hasText: 'doomed' }).locator('.countdown');
  await kept.getByText('Data kept until').waitFor();
  assert.match(await kept.innerText(), /^Data kept until \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)( \d{4})? \d\d:\d\d$/);
  // The date is the retention grace (7 days) from now, in local time.
  const until = new Date((await server.workspace(keep.id)).data.retain_until);
  assert.ok((await kept.innerText()).includes(`${until.getDate()} `), 'the day of retain_until');
  assert.match(await doomed.innerText(), /^Data erased in (2 min|1 min|\d{1,2} s)$/);
  const body = await page.locator('body').innerText();
  assert.ok(!body.includes('any moment now'), 'no "any moment now" anywhere');
  await screenshot(page, 'canvas-deleted.png');
});

test('new workspace: the open workspace is not preselected as parent; any workspace can be chosen', async () => {
  await server.api('POST', '/workspaces', { name: 'alpha', runtime: SLEEP });
  await server.api('POST', '/workspaces', { name: 'beta', runtime: SLEEP });
  const page = await page1280();
  await openWorkspace(page, 'alpha');
  await page.getByRole('button', { name: 'New workspace' }).click();
  const d = page.getByRole('dialog');
  const parent = d.getByLabel('Parent');
  await parent.locator('option', { hasText: 'alpha' }).waitFor({ state: 'attached' });
  assert.equal(await parent.inputValue(), '', 'no parent is chosen for you');
  await d.getByLabel('Name', { exact: true }).fill('gamma');
  await d.getByRole('button', { name: 'Create' }).click();
  await d.waitFor({ state: 'hidden' });
  const all = await server.api('GET', '/workspaces');
  assert.equal(all.find(w => w.name === 'gamma').parent_id, null, 'created at the top of the tree');
});

test('favicon and assets: no request of the login page, board or panel fails', async () => {
  await server.api('POST', '/workspaces', { name: 'icon', runtime: SLEEP });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  context = ctx;
  const page = await ctx.newPage();
  const failed = [];
  page.on('response', r => { if (r.status() >= 400 && !r.url().endsWith('/canvas/login')) failed.push(`${r.status()} ${r.url()}`); });
  page.on('requestfailed', r => failed.push(`failed ${r.url()}`));
  await page.goto(`${server.url}/canvas/login`);
  await page.getByLabel('Token').fill(server.token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await openWorkspace(page, 'icon');
  await page.waitForLoadState('networkidle').catch(() => {});
  const icon = await fetch(`${server.url}/favicon.ico`);
  assert.equal(icon.status, 200);
  assert.match(icon.headers.get('content-type'), /^image\/svg\+xml/);
  const linked = await page.locator('link[rel="icon"]').getAttribute('href');
  assert.equal((await fetch(server.url + linked)).status, 200);
  assert.deepEqual(failed, []);
});

test('layout: opening the panel moves no card (no 4 to 3 column reflow)', async () => {
  for (const n of ['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7', 'a8']) {
    await server.api('POST', '/workspaces', { name: n, runtime: SLEEP });
  }
  const page = await page1280({ width: 1440, height: 900 });
  await page.locator('.card[data-ws-name="a8"]').waitFor();
  const boxes = () => page.locator('#board .card').evaluateAll(cs => cs.map(c => {
    const r = c.getBoundingClientRect();
    return `${c.dataset.wsName}@${Math.round(r.left)},${Math.round(r.top)},${Math.round(r.width)}`;
  }));
  const columns = async () => new Set((await boxes()).map(b => b.split('@')[1].split(',')[0])).size;
  const before = await boxes();
  const cols = await columns();
  assert.ok(cols >= 4, `at least 4 columns at 1440 px (got ${cols})`);
  await openWorkspace(page, 'a1');
  assert.deepEqual(await boxes(), before, 'every card stays where it was');
  await page.getByRole('button', { name: 'Close panel' }).click();
  assert.deepEqual(await boxes(), before);
});

test('delete dialog: only what happens for this mode, with the exact dates', async () => {
  const keep = await server.api('POST', '/workspaces', { name: 'keeper', compute: { data_persistence: 'persist' }, runtime: SLEEP });
  await server.api('POST', '/workspaces', { name: 'scratch', compute: { data_persistence: 'ephemeral' }, runtime: SLEEP });
  const held = await server.api('POST', '/workspaces', { name: 'evidence', compute: { data_persistence: 'persist' }, runtime: SLEEP });
  await server.waitOnline(keep.id);
  await server.waitOnline(held.id);
  await server.api('PUT', `/workspaces/${held.id}/hold`, { reason: 'case 42' });
  const page = await page1280();
  const short = (ms) => {
    const t = new Date(ms);
    const m = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][t.getMonth()];
    return `${t.getDate()} ${m}`;
  };

  await openWorkspace(page, 'keeper');
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  const d = page.getByRole('dialog');
  const outcome = d.locator('#delete-outcome');
  const off = await outcome.innerText();
  assert.match(off, /is kept until \d{1,2} \w{3}( \d{4})? \d\d:\d\d \(the retention grace, 7 days\)/);
  assert.ok(off.includes(short(Date.now() + 7 * 86400e3)), `dated 7 days from now: ${off}`);
  assert.ok(!/erase/i.test(off.replace('it is erased', '')), `nothing about erasing when off: ${off}`);
  await d.getByLabel('Also erase saved data').check();
  const on = await outcome.innerText();
  assert.match(on, /erased for good after \d{1,2} \w{3}( \d{4})? \d\d:\d\d \(the erase grace, 2 min\)/);
  assert.ok(!on.includes('kept until'), `nothing about keeping when on: ${on}`);
  assert.equal(await d.locator('.explain p:visible').count(), 1, 'one paragraph, not both');
  await screenshot(page, 'canvas-delete-erase.png');
  await d.getByRole('button', { name: 'Cancel' }).click();

  await openWorkspace(page, 'scratch');
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  assert.match(await outcome.innerText(), /keeps no saved data \(it is set to Don't keep/);
  await d.getByLabel('Also erase saved data').check();
  assert.match(await outcome.innerText(), /keeps no saved data/);
  await d.getByRole('button', { name: 'Cancel' }).click();

  await openWorkspace(page, 'evidence');
  await page.locator('#hold-badge').getByText('On legal hold: case 42').waitFor();
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  assert.match(await outcome.innerText(), /kept while the legal hold lasts/);
  await d.getByLabel('Also erase saved data').check();
  assert.match(await outcome.innerText(), /on legal hold: a delete that erases is refused/);
  await d.getByRole('button', { name: 'Cancel' }).click();
  await page.locator('.card[data-ws-name="evidence"] .badge.hold').waitFor();
});

test('details: readable labels, copyable ids, the org by name, the tier explained on hover', async () => {
  const ws = await server.api('POST', '/workspaces', { name: 'reader', tier: 3, runtime: SLEEP });
  await server.waitOnline(ws.id);
  const page = await page1280();
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  await page.locator(`.card[data-ws-name="reader"][data-status="online"]`).waitFor();
  const tier = page.locator('.card[data-ws-name="reader"] .badge.tier');
  assert.equal(await tier.innerText(), 'Tier 3');
  assert.match(await tier.getAttribute('title'), /^Tier 3: up to 1 GiB of memory, 256 processes, CPU weight 200/);
  await openWorkspace(page, 'reader');
  const details = page.getByRole('tabpanel', { name: 'Details' });
  for (const label of ['Workspace ID', 'Org', 'Tier', 'Isolation', 'Runtime']) {
    await details.locator('dt', { hasText: label }).first().waitFor();
  }
  const dts = await details.locator('dt').allInnerTexts();
  assert.ok(dts.every(t => t !== t.toUpperCase() || t.length <= 3), `no shouting labels: ${dts}`);
  assert.ok(!dts.some(t => /\bid$/.test(t)), `ID spelled as a word: ${dts}`);
  await details.getByText('default', { exact: false }).first().waitFor();
  await details.getByRole('button', { name: 'Copy workspace ID' }).click();
  await details.getByRole('button', { name: 'Copy workspace ID' }).getByText('Copied').waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), ws.id);
  // Uptime and the runtime on the card.
  await page.locator('.card[data-ws-name="reader"] .uptime').getByText(/^up \d+ (s|min)/).waitFor();
  await page.locator('.card[data-ws-name="reader"] .runtime').getByText("sh -c 'exec sleep infinity'").waitFor();
});

test('usage: a chart of data size and restarts over the last 24 h, from the history the server keeps', async () => {
  const ws = await server.api('POST', '/workspaces', {
    name: 'grower',
    runtime: { command: ['sh', '-c', 'head -c 50000 /dev/zero > blob; exec sleep infinity'] },
    compute: { data_persistence: 'persist' },
  });
  await server.waitOnline(ws.id);
  await server.waitFor('a measured size in the usage history', async () => {
    const u = await server.api('GET', `/workspaces/${ws.id}/usage`);
    return u.samples.some(s => s.bytes >= 50000);
  });
  const page = await page1280();
  await openWorkspace(page, 'grower');
  const details = page.getByRole('tabpanel', { name: 'Details' });
  const chart = details.getByRole('img', { name: /^Last 24 h: data size now 50\.0 KB, peak 50\.0 KB; 0 restarts\.$/ });
  await chart.waitFor();
  assert.ok(await chart.locator('rect.size-bar').count() >= 1, 'a bar for the measured bucket');
  assert.equal(await chart.locator('.restart-mark').count(), 0, 'no restart yet');
  // The newest bucket is drawn at the right-hand end of the chart.
  const x = Number(await chart.locator('rect.size-bar').last().getAttribute('x'));
  assert.ok(x > 280, `the newest bar is at the right: x=${x}`);

  await details.getByRole('button', { name: 'Restart', exact: true }).click();
  await details.getByRole('img', { name: /; 1 restart\.$/ }).waitFor();
  const mark = details.locator('.usage-chart .restart-mark');
  assert.equal(await mark.count(), 1);
  assert.match(await mark.locator('title').textContent(), /^\d+ min ago: 1 restart$/);
  // The restart's later events re-render Details, so the card is measured
  // once the panel has settled back to online.
  await page.locator('#panel[data-status="online"]').waitFor();
  await screenshot(page, 'usage-chart.png', { clip: await boxOf(details.locator('.usage-card')) });
});

test('board: search by name or role, filter by status and mode, sort by name, status and size', async () => {
  const make = (body) => server.api('POST', '/workspaces', { runtime: SLEEP, ...body });
  await make({ name: 'web-scout', role: 'collects sources', compute: { data_persistence: 'persist' } });
  await make({ name: 'summariser', role: 'writes summaries', compute: { data_persistence: 'ephemeral' } });
  const big = await make({
    name: 'hoarder', role: 'keeps big files', compute: { data_persistence: 'persist' },
    runtime: { command: ['sh', '-c', 'head -c 300000 /dev/zero > blob; exec sleep infinity'] },
  });
  const napper = await make({ name: 'napper', role: 'sleeps a lot' });
  await server.waitOnline(napper.id);
  await server.api('POST', `/workspaces/${napper.id}/pause`);
  // The size is measured live (--usage-interval 1s), not as of the last stop.
  await server.waitFor('hoarder to be measured', async () => (await server.workspace(big.id)).data.bytes >= 300000);

  const page = await page1280();
  await page.locator('.card[data-ws-name="napper"][data-status="paused"]').waitFor();
  await page.locator('.card[data-ws-name="hoarder"] .size').getByText('300.0 KB').waitFor();
  const search = page.getByRole('searchbox', { name: 'Search' });
  await search.fill('summ');
  await page.locator('#board .card').first().waitFor();
  await page.waitForFunction(() => document.querySelectorAll('#board .card').length === 1);
  assert.deepEqual(await cardNames(page), ['summariser']);
  // The search is in the URL (written with the debounced read).
  await page.waitForURL(/q=summ/);
  await search.fill('SOURCES');
  await page.waitForFunction(() => [...document.querySelectorAll('#board .card')].map(c => c.dataset.wsName).join() === 'web-scout');
  await search.fill('nothing-like-this');
  await page.getByText('No workspace matches.').waitFor();
  await search.fill('');
  await page.locator('#board .card[data-ws-name="napper"]').waitFor();

  await page.getByLabel('Status', { exact: true }).selectOption({ label: 'Paused' });
  await page.waitForFunction(() => [...document.querySelectorAll('#board .card')].map(c => c.dataset.wsName).join() === 'napper');
  await page.getByLabel('Status', { exact: true }).selectOption({ label: 'All' });
  await page.getByLabel('Saved-data mode').selectOption({ label: 'Always keep' });
  await page.waitForFunction(() => [...document.querySelectorAll('#board .card')].map(c => c.dataset.wsName).sort().join() === 'hoarder,web-scout');
  await page.getByLabel('Saved-data mode').selectOption({ label: 'All' });

  await page.getByLabel('Sort by').selectOption({ label: 'Name' });
  await page.waitForFunction(() => document.querySelectorAll('#board .card').length === 4 && !document.querySelector('#board .children'));
  assert.deepEqual(await cardNames(page), ['hoarder', 'napper', 'summariser', 'web-scout']);
  await page.getByLabel('Sort by').selectOption({ label: 'Size' });
  await page.waitForFunction(() => document.querySelector('#board .card').dataset.wsName === 'hoarder');
  await page.getByLabel('Sort by').selectOption({ label: 'Status' });
  await page.waitForFunction(() => {
    const names = [...document.querySelectorAll('#board .card')].map(c => c.dataset.wsName);
    return names[names.length - 1] === 'napper';
  });
  // A reload keeps the view (it is the page's URL).
  await page.reload();
  assert.equal(await page.getByLabel('Sort by').inputValue(), 'status');
  await screenshot(page, 'canvas-board-sorted.png');
});

test('board: more than a page of workspaces is paged, and search reaches past the first page', async () => {
  const children = Array.from({ length: 130 }, (_, i) => ({ name: `w-${String(i).padStart(3, '0')}`, runtime: SLEEP }));
  await server.api('POST', '/org/import', { name: 'fleet', runtime: SLEEP, children });
  const page = await page1280();
  await page.getByText(/1–100 of 131 · page 1 of 2/).waitFor();
  assert.equal(await page.locator('#board .card').count(), 100);
  await page.getByRole('link', { name: 'Next page' }).click();
  await page.getByText(/101–131 of 131 · page 2 of 2/).waitFor();
  assert.equal(await page.locator('#board .card').count(), 31);
  // A card whose parent is on the other page names it.
  await page.locator('.card[data-ws-name="w-129"] .under').getByText('under fleet').waitFor();
  await page.getByRole('searchbox', { name: 'Search' }).fill('w-12');
  await page.waitForFunction(() => document.querySelectorAll('#board .card').length === 10);
  assert.equal(await page.locator('.pager').count(), 0);
});

test('logs: the tail, live follow and download', async () => {
  const ws = await server.api('POST', '/workspaces', {
    name: 'talker',
    runtime: { command: ['sh', '-c', 'echo hello-from-talker; i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.3; done'] },
  });
  await server.waitOnline(ws.id);
  const page = await page1280();
  await openWorkspace(page, 'talker');
  await page.getByRole('tab', { name: 'Logs' }).click();
  const logs = page.getByRole('tabpanel', { name: 'Logs' });
  const view = logs.getByLabel('Log', { exact: true });
  await view.getByText('hello-from-talker').waitFor();
  await logs.getByLabel('Follow live').check();
  await logs.getByText(/Following the log/).waitFor();
  const count = async () => (await view.innerText()).split('\n').filter(l => l.startsWith('tick')).length;
  const first = await server.waitFor('ticks to stream in', async () => { const c = await count(); return c > 0 ? c : null; });
  await server.waitFor('more ticks, live', async () => (await count()) > first + 2);
  await screenshot(page, 'canvas-logs.png');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    logs.getByRole('link', { name: 'Download log' }).click(),
  ]);
  const path = await download.path();
  const text = require('node:fs').readFileSync(path, 'utf8');
  assert.ok(text.includes('hello-from-talker'), 'the downloaded log has the first line');
  await logs.getByLabel('Follow live').uncheck();
});

test('files: browse the data read-only, download a file, links shown and never followed', async () => {
  const ws = await server.api('POST', '/workspaces', {
    name: 'librarian', compute: { data_persistence: 'persist' },
    runtime: { command: ['sh', '-c', 'mkdir -p notes/deep && echo "dear diary" > notes/diary.txt && echo x > notes/deep/x && ln -sf /etc/passwd escape && exec sleep infinity'] },
  });
  await server.waitOnline(ws.id);
  await server.waitFor('the files to be written', async () => {
    const r = await fetch(`${server.url}/workspaces/${ws.id}/data/files?path=notes`, { headers: { Authorization: `Bearer ${server.token}` } });
    return r.ok && (await r.json()).entries.some(e => e.name === 'diary.txt');
  });
  const page = await page1280();
  await openWorkspace(page, 'librarian');
  await page.getByRole('tab', { name: 'Files' }).click();
  const files = page.getByRole('tabpanel', { name: 'Files' });
  await files.getByText('escape').waitFor();
  await files.getByText('→ /etc/passwd (link, not followed)').waitFor();
  assert.equal(await files.getByRole('link', { name: 'Download escape' }).count(), 0, 'a link cannot be downloaded');
  await files.getByRole('button', { name: 'notes/' }).click();
  await files.getByRole('button', { name: 'deep/' }).waitFor();
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    files.getByRole('link', { name: 'Download diary.txt' }).click(),
  ]);
  assert.equal(download.suggestedFilename(), 'diary.txt');
  assert.equal(require('node:fs').readFileSync(await download.path(), 'utf8'), 'dear diary\n');
  await screenshot(page, 'canvas-files.png');
  await files.getByRole('navigation', { name: 'Folder' }).getByRole('button', { name: 'data' }).click();
  await files.getByText('escape').waitFor();

  // The API refuses to follow the link and names what was wrong.
  const auth = { headers: { Authorization: `Bearer ${server.token}` } };
  const link = await fetch(`${server.url}/workspaces/${ws.id}/data/file?path=escape`, auth);
  assert.equal(link.status, 400);
  assert.equal((await link.json()).code, 'not_a_file');
  const up = await fetch(`${server.url}/workspaces/${ws.id}/data/file?path=../../admin-token`, auth);
  assert.equal(up.status, 400);
  const missing = await fetch(`${server.url}/workspaces/${ws.id}/data/files?path=nope`, auth);
  assert.equal(missing.status, 404);
  // Positive control: the same route does serve a regular file.
  const ok = await fetch(`${server.url}/workspaces/${ws.id}/data/file?path=notes/diary.txt`, auth);
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('content-disposition'), 'attachment; filename="diary.txt"');
  assert.equal(ok.headers.get('x-content-type-options'), 'nosniff');
});

test('snapshots tab: take, roll back (the current data kept as before-rollback), export, delete', async () => {
  const ws = await server.api('POST', '/workspaces', { name: 'timeline', compute: { data_persistence: 'persist' } });
  await server.waitOnline(ws.id);
  await server.api('POST', `/workspaces/${ws.id}/messages`, { text: 'first thought' });
  const page = await page1280();
  await openWorkspace(page, 'timeline');
  await page.getByRole('tab', { name: 'Snapshots' }).click();
  const tab = page.getByRole('tabpanel', { name: 'Snapshots' });
  await tab.getByText('No snapshots yet.').waitFor();
  await tab.getByLabel('Snapshot label').fill('v1');
  await tab.getByRole('button', { name: 'Take snapshot' }).click();
  await tab.getByText(/Snapshot taken: \d+ files/).waitFor();
  await tab.getByRole('cell', { name: 'v1', exact: true }).waitFor();

  await server.api('POST', `/workspaces/${ws.id}/messages`, { text: 'second thought' });
  await tab.getByRole('button', { name: 'Roll back to v1' }).click();
  const confirm = page.getByRole('dialog', { name: 'Roll back timeline?' });
  await confirm.getByText('The current data is kept first as a snapshot labelled before-rollback, so nothing is lost.').waitFor();
  await confirm.getByRole('button', { name: 'Roll back' }).click();
  await page.getByText(/Rolled timeline back to/).waitFor();
  await tab.getByRole('cell', { name: 'before-rollback', exact: true }).waitFor();
  const back = await server.waitOnline(ws.id);
  const { messages } = await server.api('GET', `/workspaces/${back.id}/messages`);
  assert.ok(messages.some(m => m.text === 'first thought'));
  assert.ok(!messages.some(m => m.text === 'second thought'), 'the data is the snapshot');

  const [download] = await Promise.all([
    page.waitForEvent('download'),
    tab.getByRole('link', { name: 'Export v1' }).click(),
  ]);
  assert.match(download.suggestedFilename(), /\.tar\.gz$/);

  await tab.getByRole('button', { name: 'Delete v1' }).click();
  const del = page.getByRole('dialog', { name: 'Delete this snapshot?' });
  await del.getByRole('button', { name: 'Delete snapshot' }).click();
  await tab.getByText(/Deleted the snapshot of/).waitFor();
  await tab.getByRole('cell', { name: 'v1', exact: true }).waitFor({ state: 'detached' });
  const left = await server.api('GET', `/workspaces/${ws.id}/snapshots`);
  assert.deepEqual(left.map(s => s.label), ['before-rollback']);
  await screenshot(page, 'canvas-snapshots.png');
});

test('keyboard only: find a workspace, open it and delete it without the mouse', async () => {
  await server.api('POST', '/workspaces', { name: 'first', runtime: SLEEP });
  const ws = await server.api('POST', '/workspaces', { name: 'target', runtime: SLEEP });
  const page = await page1280();
  await page.locator('.card[data-ws-name="target"]').waitFor();
  const tabTo = async (what, predicate, max = 40) => {
    for (let i = 0; i < max; i++) {
      if (await page.evaluate(predicate)) return;
      await page.keyboard.press('Tab');
    }
    assert.fail(`${what} is not reachable with Tab`);
  };
  // "/" jumps to the search; Tab leads on to the cards; arrows move across them.
  await page.locator('body').press('/');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'f-q');
  await tabTo('the first card', () => document.activeElement.matches('.card a.ws-link'));
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'first');
  await page.keyboard.press('ArrowDown');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'target');
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('End');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'target');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'target', level: 2 }).waitFor();
  // Tab through the panel to Delete.
  await tabTo('Delete', () => document.activeElement.dataset.action === 'delete');
  await page.keyboard.press('Enter');
  const d = page.getByRole('dialog');
  await d.waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'delete-confirm', 'focus starts in the name field');
  await page.keyboard.type('target');
  await page.keyboard.press('Enter');
  await d.waitFor({ state: 'hidden' });
  await server.waitFor('the workspace removed', async () => (await server.workspace(ws.id)).status === 'removed');
  // Escape closes the panel.
  await page.locator('body').press('/');
  await tabTo('the remaining card', () => document.activeElement.matches('.card a.ws-link'));
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'first', level: 2 }).waitFor();
  await page.keyboard.press('Escape');
  await page.getByRole('heading', { name: 'first', level: 2 }).waitFor({ state: 'detached' });
});

test('axe-core: no serious or critical violation on the login page, board, panel tabs and dialogs, light and dark', async () => {
  // Positive control: the check finds a violation when there is one.
  const probe = await browser.newPage();
  await probe.setContent('<html lang="en"><body><main><button></button><img src="x.png"></main></body></html>');
  const planted = await axeSerious(probe);
  await probe.close();
  assert.ok(planted.some(v => v.id === 'button-name'), `axe finds a planted violation: ${JSON.stringify(planted)}`);

  const ws = await server.api('POST', '/workspaces', { name: 'audited', role: 'checked by axe', compute: { data_persistence: 'persist' } });
  await server.api('POST', '/workspaces', { name: 'child', parent_id: ws.id, runtime: SLEEP });
  const old = await server.api('POST', '/workspaces', { name: 'gone', compute: { data_persistence: 'persist' }, runtime: SLEEP });
  await server.waitOnline(ws.id);
  await server.waitOnline(old.id);
  await server.api('DELETE', `/workspaces/${old.id}`, undefined, { 'X-Confirm-Name': 'gone' });
  const found = [];
  for (const scheme of ['light', 'dark']) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: scheme });
    const page = await ctx.newPage();
    await page.goto(`${server.url}/canvas/login`);
    for (const v of await axeSerious(page)) found.push({ at: `${scheme} login`, ...v });
    await page.getByLabel('Token').fill(server.token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('.card[data-ws-name="audited"][data-status="online"]').waitFor();
    await page.getByText('Live', { exact: true }).waitFor();
    for (const v of await axeSerious(page)) found.push({ at: `${scheme} board`, ...v });
    await page.locator('.card[data-ws-name="audited"] a.ws-link').click();
    for (const tab of ['Details', 'Config', 'Logs', 'Files', 'Snapshots', 'Chat', 'Activity']) {
      await page.getByRole('tab', { name: tab }).click();
      await page.waitForTimeout(300);
      for (const v of await axeSerious(page)) found.push({ at: `${scheme} ${tab}`, ...v });
    }
    await page.getByRole('tab', { name: 'Details' }).click();
    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    for (const v of await axeSerious(page)) found.push({ at: `${scheme} delete dialog`, ...v });
    await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
    await page.getByRole('button', { name: 'New workspace' }).click();
    for (const v of await axeSerious(page)) found.push({ at: `${scheme} new dialog`, ...v });
    await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
    if (scheme === 'dark') await screenshot(page, 'canvas-dark.png');
    await ctx.close();
  }
  assert.deepEqual(found, [], JSON.stringify(found, null, 2));
});
