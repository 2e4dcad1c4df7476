// Helpers for the canvas's browser tests: a real `holdfast serve` on port 0
// with a fresh data dir, and Debian's Chromium driven by playwright-core.
'use strict';

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const BIN = process.env.HOLDFAST_BIN || path.resolve(__dirname, '../../target/debug/holdfast');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const DOCS = path.resolve(__dirname, '../../docs');

/** Starts `holdfast serve` and resolves once it prints its URL. */
async function startServer(extraArgs = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'holdfast-browser-'));
  const token = `admin_${crypto.randomBytes(16).toString('hex')}`;
  const child = spawn(BIN, [
    'serve', '--listen', '127.0.0.1:0', '--data-dir', dir, '--admin-token', token, ...extraArgs,
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
  let output = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`holdfast serve did not start in time:\n${output}`)), 30000);
    const onData = (chunk) => {
      output += chunk;
      const m = output.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`holdfast serve exited (${code}):\n${output}`)); });
  });
  // Keep draining so the child never blocks on a full pipe.
  child.stdout.resume();
  child.stderr.resume();

  async function api(method, p, body, headers = {}) {
    const res = await fetch(url + p, {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (e) { json = text; }
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return json;
  }

  async function waitFor(what, predicate, timeoutMs = 30000) {
    const end = Date.now() + timeoutMs;
    let last;
    while (Date.now() < end) {
      last = await predicate();
      if (last) return last;
      await new Promise(r => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  const server = {
    url, token, dir, api, waitFor,
    workspace: (id) => api('GET', `/workspaces/${id}`),
    async waitOnline(id) {
      return waitFor(`workspace ${id} online`, async () => {
        const ws = await server.workspace(id);
        return ws.status === 'online' ? ws : null;
      });
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise(r => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
        await exited;
        clearTimeout(timer);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

/** A fresh browser context and page at 1280 px, signed in to the canvas. */
async function signedIn(browser, server, { width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(`${server.url}/canvas`);
  await page.getByLabel('Token').fill(server.token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: /^Workspaces/ }).waitFor();
  return { context, page };
}

/** Saves a screenshot to docs/ when HOLDFAST_SCREENSHOTS=1, else to a temp dir. */
async function screenshot(page, name, options = {}) {
  const dir = process.env.HOLDFAST_SCREENSHOTS === '1' ? DOCS : path.join(os.tmpdir(), 'holdfast-screenshots');
  fs.mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: path.join(dir, name), ...options });
}

/**
 * The bounding box of the element a locator names, for a screenshot's clip.
 * The panel replaces its read-only parts when an event arrives, so a box
 * read between the match and the measure can come back null: read again.
 */
async function boxOf(locator, { tries = 50 } = {}) {
  for (let i = 0; i < tries; i++) {
    const box = await locator.boundingBox();
    if (box) return box;
    await new Promise(r => setTimeout(r, 100));
  }
  throw new Error(`no bounding box for ${locator} after ${tries} tries`);
}

/**
 * Runs axe-core (pinned in package.json) on the page and returns the
 * violations of impact serious or critical.
 */
async function axeSerious(page, options = {}) {
  await page.addScriptTag({ path: require.resolve('axe-core/axe.min.js') });
  const result = await page.evaluate(async (opts) => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'], ...opts });
    return r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5) }));
  }, options);
  return result.filter(v => v.impact === 'serious' || v.impact === 'critical');
}

module.exports = { startServer, launchBrowser, signedIn, screenshot, boxOf, axeSerious };
