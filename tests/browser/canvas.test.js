// Browser tests of the canvas: each test starts its own `holdfast serve` on
// port 0 with a fresh data dir and drives Debian's Chromium through the
// page, finding controls by role and accessible name (SPEC §12), then checks
// the outcome through the JSON API.
'use strict';

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startServer, launchBrowser, signedIn, screenshot } = require('./helpers');

let browser;
let server;
let context;

before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });
beforeEach(async () => { server = await startServer(['--erase-grace', '2m']); });
afterEach(async () => {
  if (context) await context.close();
  context = null;
  if (server) await server.stop();
  server = null;
});

async function page1280() {
  const s = await signedIn(browser, server);
  context = s.context;
  return s.page;
}

async function byName(name) {
  const all = await server.api('GET', '/workspaces?include_removed=true');
  return all.find(w => w.name === name);
}

function dialog(page) {
  return page.getByRole('dialog');
}

async function createInUi(page, { name, saved, parent, role }) {
  await page.getByRole('button', { name: 'New workspace' }).click();
  const d = dialog(page);
  await d.getByLabel('Name', { exact: true }).fill(name);
  if (role) await d.getByLabel('Role').fill(role);
  if (parent) await d.getByLabel('Parent').selectOption({ label: parent });
  await d.getByLabel('Saved data').selectOption({ label: saved });
  await d.getByRole('button', { name: 'Create' }).click();
  await d.waitFor({ state: 'hidden' });
  // The new workspace opens in the side panel.
  await page.getByRole('heading', { name, exact: true, level: 2 }).waitFor();
}

async function openWorkspace(page, name) {
  await page.getByRole('link', { name, exact: true }).first().click();
  await page.getByRole('heading', { name, exact: true, level: 2 }).waitFor();
}

async function deleteInUi(page, name, { erase }) {
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  const d = dialog(page);
  const box = d.getByLabel('Also erase saved data');
  assert.equal(await box.isChecked(), false, 'erase is off by default');
  const confirm = d.getByRole('button', { name: 'Delete', exact: true });
  assert.equal(await confirm.isDisabled(), true, 'Delete is disabled before the name is typed');
  await d.getByLabel('Type the workspace name to confirm').fill(name.slice(0, -1));
  assert.equal(await confirm.isDisabled(), true, 'Delete stays disabled for a partial name');
  await d.getByLabel('Type the workspace name to confirm').fill(name);
  if (erase) await box.check();
  assert.equal(await confirm.isDisabled(), false);
  await confirm.click();
  await d.waitFor({ state: 'hidden' });
}

test('login: a wrong token is refused with a clear error; the right one signs in; sign out', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  context = ctx;
  const page = await ctx.newPage();
  await page.goto(`${server.url}/`);
  assert.match(page.url(), /\/canvas\/login$/, '/ leads to the login page when signed out');
  await page.getByLabel('Token').fill('not-the-token');
  const [res] = await Promise.all([
    page.waitForResponse(r => r.url().endsWith('/canvas/login') && r.request().method() === 'POST'),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  assert.equal(res.status(), 401);
  await page.getByRole('alert').filter({ hasText: 'not accepted' }).waitFor();
  assert.deepEqual(await ctx.cookies(), [], 'a refused login sets no cookie');

  await page.getByLabel('Token').fill(server.token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: /^Workspaces/ }).waitFor();
  await page.getByText('No workspaces yet.').waitFor();
  const [cookie] = await ctx.cookies();
  assert.equal(cookie.name, 'holdfast_session');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.notEqual(cookie.value, server.token, 'the cookie holds a session id, not the token');

  // A login posted from another site is refused (login CSRF).
  const forged = await fetch(`${server.url}/canvas/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Origin: 'http://evil.example' },
    body: `token=${server.token}`,
  });
  assert.equal(forged.status, 403);
  assert.equal(forged.headers.get('set-cookie'), null);

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('button', { name: 'Sign in' }).waitFor();
  assert.deepEqual(await ctx.cookies(), [], 'sign out clears the cookie');
  await page.goto(`${server.url}/canvas`);
  assert.match(page.url(), /\/canvas\/login$/);
});

test('create: each Saved data option is sent as the API expects', async () => {
  const page = await page1280();
  await createInUi(page, { name: 'keeper', saved: 'Always keep', role: 'research lead' });
  await createInUi(page, { name: 'forgetter', saved: "Don't keep", parent: 'keeper' });
  await createInUi(page, { name: 'chooser', saved: 'Auto', parent: 'keeper' });
  assert.deepEqual((await byName('keeper')).compute, { data_persistence: 'persist' });
  assert.deepEqual((await byName('forgetter')).compute, { data_persistence: 'ephemeral' });
  assert.deepEqual((await byName('chooser')).compute, {});
  assert.equal((await byName('chooser')).parent_id, (await byName('keeper')).id);
  // The board shows each mode; Auto shows what it resolved to.
  const card = (name) => page.locator(`.card[data-ws-name="${name}"]`);
  await card('keeper').getByText('Always keep').waitFor();
  await card('forgetter').getByText("Don't keep").waitFor();
  await card('chooser').getByText('Auto → Always keep').waitFor();
});

test('config: Save sends each Saved data option (Auto as an omitted field)', async () => {
  const ws = await server.api('POST', '/workspaces', { name: 'tuner' });
  const page = await page1280();
  await openWorkspace(page, 'tuner');
  await page.getByRole('tab', { name: 'Config' }).click();
  const panel = page.getByRole('tabpanel', { name: 'Config' });
  for (const [label, compute] of [
    ['Always keep', { data_persistence: 'persist' }],
    ["Don't keep", { data_persistence: 'ephemeral' }],
    ['Auto', {}],
  ]) {
    await panel.getByLabel('Saved data').selectOption({ label });
    await panel.getByRole('button', { name: 'Save', exact: true }).click();
    await page.getByRole('tabpanel', { name: 'Config' }).getByText('Saved. The change applies at the next start.').waitFor();
    assert.deepEqual((await server.workspace(ws.id)).compute, compute, `after saving ${label}`);
    assert.equal(await page.getByRole('tabpanel', { name: 'Config' }).getByLabel('Saved data').inputValue(),
      { 'Always keep': 'persist', "Don't keep": 'ephemeral', Auto: 'auto' }[label]);
  }
});

test('runtime.image: shown in Details when set, kept and changed by a Config save', async () => {
  const ws = await server.api('POST', '/workspaces', {
    name: 'boxed', runtime: { command: ['sleep', '600'], image: 'localhost/tools:1' },
  });
  await server.api('POST', '/workspaces', { name: 'plain', runtime: { command: ['sleep', '600'] } });
  const page = await page1280();
  await openWorkspace(page, 'plain');
  const plain = page.getByRole('tabpanel', { name: 'Details' });
  assert.equal(await plain.getByText('Image', { exact: true }).count(), 0, 'no Image row without one');
  await openWorkspace(page, 'boxed');
  const details = page.getByRole('tabpanel', { name: 'Details' });
  await details.getByText('Image', { exact: true }).waitFor();
  await details.getByText('localhost/tools:1', { exact: true }).waitFor();
  await page.getByRole('tab', { name: 'Config' }).click();
  const panel = page.getByRole('tabpanel', { name: 'Config' });
  assert.equal(await panel.getByLabel('Container image').inputValue(), 'localhost/tools:1');
  for (const [value, expected] of [['localhost/tools:1', 'localhost/tools:1'], ['localhost/tools:2', 'localhost/tools:2'], ['', undefined]]) {
    await panel.getByLabel('Container image').fill(value);
    await panel.getByRole('button', { name: 'Save', exact: true }).click();
    await page.getByRole('tabpanel', { name: 'Config' }).getByText('Saved. The change applies at the next start.').waitFor();
    const runtime = (await server.workspace(ws.id)).runtime;
    assert.equal(runtime.image, expected, `after saving ${JSON.stringify(value)}`);
    assert.deepEqual(runtime.command, ['sleep', '600'], 'the command is kept');
  }
});

test('delete without erase: listed under Recently deleted with Restore, data retained', async () => {
  const ws = await server.api('POST', '/workspaces', { name: 'keepsake', compute: { data_persistence: 'persist' } });
  const page = await page1280();
  await openWorkspace(page, 'keepsake');
  await server.waitOnline(ws.id);
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Export data' }).click(),
  ]);
  assert.match(download.suggestedFilename(), /\.tar\.gz$/);
  await deleteInUi(page, 'keepsake', { erase: false });
  await page.locator('.toast', { hasText: 'Its saved data is kept' }).getByRole('button', { name: 'Undo' }).waitFor();
  const row = page.locator('.deleted-row', { hasText: 'keepsake' });
  await row.getByRole('button', { name: 'Restore' }).waitFor();
  const after = await server.workspace(ws.id);
  assert.equal(after.status, 'removed');
  assert.equal(after.data.state, 'retained');
  assert.ok(after.data.retain_until);
});

test('delete with erase, then Undo: the workspace comes back with its data', async () => {
  const ws = await server.api('POST', '/workspaces', { name: 'scribe', compute: { data_persistence: 'persist' } });
  await server.waitOnline(ws.id);
  await server.api('POST', `/workspaces/${ws.id}/messages`, { text: 'the secret is 42' });
  const page = await page1280();
  await openWorkspace(page, 'scribe');
  await deleteInUi(page, 'scribe', { erase: true });
  const toast = page.locator('.toast', { hasText: 'will be erased' });
  await toast.waitFor();
  assert.equal((await server.workspace(ws.id)).data.state, 'erase_pending');
  await toast.getByRole('button', { name: 'Undo' }).click();
  await page.getByText('Restored scribe').waitFor();
  const back = await server.waitOnline(ws.id);
  assert.equal(back.data.state, 'active');
  const { messages } = await server.api('GET', `/workspaces/${ws.id}/messages`);
  assert.ok(messages.some(m => m.text === 'the secret is 42'), 'the remembered message survived');
});

test('restore from Recently deleted', async () => {
  const ws = await server.api('POST', '/workspaces', { name: 'phoenix' });
  await server.api('DELETE', `/workspaces/${ws.id}`, undefined, { 'X-Confirm-Name': 'phoenix' });
  const page = await page1280();
  const row = page.locator('.deleted-row', { hasText: 'phoenix' });
  await row.getByText('Data kept until').waitFor();
  assert.match(await row.locator('.countdown').innerText(), /^Data kept until \d{1,2} [A-Z][a-z]{2}( \d{4})? \d\d:\d\d$/);
  await row.getByRole('button', { name: 'Restore' }).click();
  await page.getByText('Restored phoenix').waitFor();
  await row.waitFor({ state: 'detached' });
  await page.locator('.card[data-ws-name="phoenix"]').waitFor();
  const back = await server.workspace(ws.id);
  assert.notEqual(back.status, 'removed');
  assert.equal(back.data.state, 'active');
});

test('chat: the runtime remembers messages across Save & Restart', async () => {
  const ws = await server.api('POST', '/workspaces', { name: 'memory', compute: { data_persistence: 'persist' } });
  const first = await server.waitOnline(ws.id);
  const page = await page1280();
  await openWorkspace(page, 'memory');
  await page.getByRole('tab', { name: 'Chat' }).click();
  const chat = page.getByRole('tabpanel', { name: 'Chat' });
  await chat.getByText('No messages yet').waitFor();
  await chat.getByLabel('Message').fill('remember the milk');
  await chat.getByRole('button', { name: 'Send' }).click();
  await chat.getByRole('list', { name: 'Chat history' }).getByText('remember the milk').first().waitFor();

  await page.getByRole('tab', { name: 'Config' }).click();
  await page.getByRole('tabpanel', { name: 'Config' }).getByRole('button', { name: 'Save & Restart' }).click();
  await page.getByText('Saved and restarted.').waitFor();
  await server.waitFor('a new instance online', async () => {
    const w = await server.workspace(ws.id);
    return w.status === 'online' && w.instance_id !== first.instance_id ? w : null;
  });
  await page.getByRole('tab', { name: 'Chat' }).click();
  await chat.getByRole('list', { name: 'Chat history' }).getByText('remember the milk').first().waitFor();
});

test('narrow screen: the board and the panel stay usable', async () => {
  await server.api('POST', '/workspaces', { name: 'pocket', role: 'on the go' });
  const s = await signedIn(browser, server, { width: 390, height: 800 });
  context = s.context;
  const page = s.page;
  await openWorkspace(page, 'pocket');
  await page.getByRole('tab', { name: 'Config' }).click();
  await page.getByRole('tabpanel', { name: 'Config' }).getByLabel('Saved data').waitFor();
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `no horizontal scrolling (page is ${width}px wide)`);
  // The panel closes with the keyboard and focus returns to the card.
  await page.keyboard.press('Escape');
  await page.getByRole('tab', { name: 'Config' }).waitFor({ state: 'detached' });
});

test('import: the dry-run plan comes first, says removed workspaces keep their data, then applies', async () => {
  const sleep = { command: ['sh', '-c', 'exec sleep infinity'] };
  const team = await server.api('POST', '/workspaces', { name: 'team', runtime: sleep });
  const old = await server.api('POST', '/workspaces', {
    name: 'old', parent_id: team.id, runtime: sleep, compute: { data_persistence: 'persist' },
  });
  await server.waitOnline(old.id);

  const page = await page1280();
  await page.getByRole('button', { name: 'Import', exact: true }).click();
  const d = dialog(page);
  const apply = d.getByRole('button', { name: 'Apply' });
  assert.equal(await apply.isDisabled(), true, 'nothing to apply before a preview');

  // A bad document: the error names the path and the line; nothing changes.
  await d.getByLabel('YAML document').fill('name: team\ntier: 9\n');
  await d.getByRole('button', { name: 'Preview' }).click();
  await d.getByRole('alert').filter({ hasText: 'team (line 2): tier' }).waitFor();
  assert.equal(await apply.isDisabled(), true);

  const doc = [
    'name: team',
    'runtime: {command: [sh, -c, exec sleep infinity]}',
    'children:',
    '  - name: fresh',
    '    runtime: {command: [sh, -c, exec sleep infinity]}',
    '',
  ].join('\n');
  await d.getByLabel('YAML document').fill(doc);
  await d.getByLabel('Also remove workspaces the document no longer names').check();
  await d.getByRole('button', { name: 'Preview' }).click();
  const plan = d.getByRole('region', { name: 'Plan' });
  await plan.getByText('+ create team/fresh').waitFor();
  await plan.getByText('- remove team/old (saved data kept)').waitFor();
  await plan.getByText(/Removed workspaces keep their saved data\. Nothing is erased/).waitFor();
  await plan.getByText(/Nothing has changed yet/).waitFor();
  // The preview was a dry run.
  assert.equal((await server.workspace(old.id)).status, 'online');
  assert.equal(await byName('fresh'), undefined);
  await screenshot(page, 'canvas-import.png');

  // Editing the document takes the plan away until the next preview.
  await d.getByLabel('YAML document').fill(`${doc}# edited\n`);
  assert.equal(await apply.isDisabled(), true, 'an edited document needs a new preview');
  await d.getByRole('button', { name: 'Preview' }).click();
  await plan.getByText('+ create team/fresh').waitFor();
  await apply.click();
  await d.waitFor({ state: 'hidden' });
  await page.getByText(/Imported: 1 created, 0 changed, 1 removed\. Removed workspaces keep their saved data\./).waitFor();

  const fresh = await server.waitFor('fresh to exist', () => byName('fresh'));
  assert.equal(fresh.parent_id, team.id);
  assert.equal((await server.workspace(old.id)).status, 'removed');
  const volume = await server.waitFor('the old data to be retained', async () => {
    const v = await server.api('GET', `/workspaces/${old.id}/data`);
    return v.state === 'retained' ? v : null;
  });
  assert.ok(volume.retain_until, 'kept until the retention grace ends');
  await page.locator('.card[data-ws-name="fresh"]').waitFor();
});

test('screenshots: board, Config tab and delete dialog at 1280 px', async () => {
  const make = (body) => server.api('POST', '/workspaces', body);
  const lead = await make({ name: 'research-lead', role: 'Plans the research and reviews results', compute: { data_persistence: 'persist' } });
  const scout = await make({ name: 'web-scout', role: 'Browses and collects sources', parent_id: lead.id });
  await make({ name: 'summariser', role: 'Writes summaries', parent_id: lead.id, compute: { data_persistence: 'ephemeral' } });
  await make({ name: 'fact-checker', role: 'Checks claims against sources', parent_id: scout.id, tier: 3 });
  const ops = await make({ name: 'ops-bot', role: 'Watches the deploys', compute: { data_persistence: 'persist' } });
  await make({ name: 'pager', role: 'Wakes people up', parent_id: ops.id, runtime: { command: ['sh', '-c', 'exec sleep infinity'] } });
  const old = await make({ name: 'old-experiment', role: 'A finished experiment', compute: { data_persistence: 'persist' } });
  await server.waitOnline(lead.id);
  await server.waitOnline(old.id);
  await server.api('POST', `/workspaces/${lead.id}/messages`, { text: 'Plan: compare three storage engines.' });
  await server.api('DELETE', `/workspaces/${old.id}`, undefined, { 'X-Confirm-Name': 'old-experiment' });
  await server.api('POST', `/workspaces/${ops.id}/pause?cascade=true`);

  const page = await page1280();
  await page.locator('.card[data-ws-name="fact-checker"][data-status="online"]').waitFor();
  await page.getByText('Live', { exact: true }).waitFor();
  await screenshot(page, 'canvas-board.png');

  await openWorkspace(page, 'research-lead');
  await page.getByRole('tab', { name: 'Config' }).click();
  await page.getByRole('tabpanel', { name: 'Config' }).getByLabel('Saved data').waitFor();
  await screenshot(page, 'canvas-config.png');

  await page.getByRole('tab', { name: 'Details' }).click();
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  const d = dialog(page);
  await d.getByLabel('Type the workspace name to confirm').fill('research-le');
  await screenshot(page, 'canvas-delete.png');
  await d.getByRole('button', { name: 'Cancel' }).click();
});
