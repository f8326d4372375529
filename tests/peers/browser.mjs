// A headless Chromium for Lodge's browser tests: puppeteer-core drives Debian's /usr/bin/chromium
// (CHROMIUM overrides the path) with a fresh profile and a fixed 1280x900 viewport. It owns no
// test logic: it runs one command at a time and reports, so a Rust test can interleave HTTP calls
// and browser steps.
//
// Protocol: one JSON command per line on stdin, one JSON answer per line on stdout. The first line
// out is {"ready": true, "version": "..."}. A command is {"cmd": NAME, ...args, "timeout"?: ms}
// (default 15000); the answer is {"ok": true, ...} or {"error": "..."} — a command never hangs past
// its timeout. Commands:
//   goto {url}                     -> {url, status}
//   fill {selector, value}         replaces the field's value by typing
//   click {selector}               -> {url, status?}; waits for the navigation the click causes, if any
//   submit {selector}              like click, for a form (requestSubmit) or its submit button
//   url                            -> {url}
//   text                           -> {text} (body innerText)
//   html                           -> {html}
//   cookies                        -> {cookies: [{name, value, domain, path, expires, httpOnly,
//                                      secure, sameSite, session}]} (every cookie of the profile)
//   setCookie {cookie}             {name, value, url | domain+path, httpOnly?, secure?, sameSite?}
//   clearCookies                   drops every cookie of the profile
//   screenshot {path}              full-page PNG
//   waitForUrl {prefix}            -> {url}; waits until the page's URL starts with prefix
//   close                          exits
// stdin closing also closes the browser and exits.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import puppeteer from 'puppeteer-core';

const DEFAULT_TIMEOUT = 15000;
// How long a click may take to start a navigation before it counts as one that causes none.
const NAV_START_GRACE = 750;

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'lodge-chromium-'));
let browser;
let page;
let lastStatus = null;

function out(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function shutdown(code) {
  try {
    await browser?.close();
  } catch {
    // already gone
  }
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Runs `action` (a click or submit) and, if it starts a main-frame navigation, waits for that
// navigation (redirects included) to load.
async function settle(action, timeout) {
  let started = false;
  const onRequest = (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) started = true;
  };
  page.on('request', onRequest);
  const navigation = page.waitForNavigation({ timeout, waitUntil: 'load' }).then((r) => ({ r }), (e) => ({ e }));
  try {
    await action();
    await sleep(NAV_START_GRACE);
    if (!started) return {};
    const { r, e } = await navigation;
    if (e) throw e;
    lastStatus = r?.status() ?? null;
    return { status: lastStatus };
  } finally {
    page.off('request', onRequest);
  }
}

async function element(selector) {
  const el = await page.$(selector);
  if (!el) throw new Error(`no element matches ${selector} on ${page.url()}`);
  return el;
}

const commands = {
  async goto({ url }, timeout) {
    const response = await page.goto(url, { timeout, waitUntil: 'load' });
    lastStatus = response?.status() ?? null;
    return { url: page.url(), status: lastStatus };
  },
  async fill({ selector, value }) {
    const el = await element(selector);
    await el.evaluate((node) => { node.value = ''; });
    await el.type(String(value));
    return {};
  },
  async click({ selector }, timeout) {
    const el = await element(selector);
    const nav = await settle(() => el.click(), timeout);
    return { url: page.url(), ...nav };
  },
  async submit({ selector }, timeout) {
    const el = await element(selector);
    const nav = await settle(() => el.evaluate((node) => {
      if (node instanceof HTMLFormElement) node.requestSubmit();
      else if (node.form) node.form.requestSubmit(node.type === 'submit' ? node : undefined);
      else throw new Error('not a form or a form field');
    }), timeout);
    return { url: page.url(), ...nav };
  },
  async url() {
    return { url: page.url() };
  },
  async text() {
    return { text: await page.evaluate(() => document.body?.innerText ?? '') };
  },
  async html() {
    return { html: await page.content() };
  },
  async cookies() {
    const cookies = await browser.cookies();
    return {
      cookies: cookies.map((c) => ({
        name: c.name,
        value: c.value,
        domain: c.domain,
        path: c.path,
        expires: c.expires,
        httpOnly: c.httpOnly,
        secure: c.secure,
        sameSite: c.sameSite ?? null,
        session: c.session,
      })),
    };
  },
  async setCookie({ cookie }) {
    await browser.setCookie(cookie);
    return {};
  },
  async clearCookies() {
    const cookies = await browser.cookies();
    if (cookies.length) await browser.deleteCookie(...cookies);
    return {};
  },
  async screenshot({ path: file }) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await page.screenshot({ path: file, fullPage: true });
    return { path: file };
  },
  async waitForUrl({ prefix }, timeout) {
    const deadline = Date.now() + timeout;
    while (!page.url().startsWith(prefix)) {
      if (Date.now() > deadline) throw new Error(`url is ${page.url()}, not ${prefix}...`);
      await sleep(50);
    }
    return { url: page.url() };
  },
  async close() {
    out({ ok: true });
    await shutdown(0);
  },
};

async function run(line) {
  let command;
  try {
    command = JSON.parse(line);
  } catch (e) {
    return { error: `bad JSON: ${e.message}` };
  }
  const handler = commands[command.cmd];
  if (!handler) return { error: `unknown command ${command.cmd}` };
  const timeout = Number(command.timeout) || DEFAULT_TIMEOUT;
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${command.cmd} timed out after ${timeout} ms`)), timeout + 1000);
  });
  try {
    return { ok: true, ...(await Promise.race([handler(command, timeout), expired])) };
  } catch (e) {
    return { error: String(e?.message ?? e) };
  } finally {
    clearTimeout(timer);
  }
}

try {
  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    userDataDir: profile,
    defaultViewport: { width: 1280, height: 900 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30000,
    // Over a pipe, Chromium exits by itself when this process dies, however it dies.
    pipe: true,
  });
  [page] = await browser.pages();
  page ??= await browser.newPage();
} catch (e) {
  out({ error: `cannot start Chromium: ${e?.message ?? e}` });
  await shutdown(1);
}
out({ ready: true, version: await browser.version() });

// One command at a time, in order: answers line up with commands.
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim()) out(await run(line));
}
await shutdown(0);
