// Browser test of the warren operator console, driven by the Rust test suite.
//   node run.mjs dlq    env: CONSOLE_BASE CONSOLE_TOKEN SCREENSHOT_DIR QUEUE EXPECT_PARKED
//   node run.mjs saga   env: CONSOLE_BASE CONSOLE_TOKEN SCREENSHOT_DIR ORDER_NO
//   node run.mjs subscriptions   env: CONSOLE_BASE CONSOLE_TOKEN SCREENSHOT_DIR SUBSCRIPTION
// Plain Node + playwright-core with Debian's Chromium (/usr/bin/chromium, never a downloaded
// browser, nothing fetched from the internet). Prints one line per step; exits 0 on success,
// 1 with the failed expectation (plus a failure-<phase>.png screenshot) otherwise.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const WAIT = 30_000; // every wait is bounded by this
const phase = process.argv[2];
const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') {
    console.error(`[console:${phase}] FAILED: missing env ${name}`);
    process.exit(2);
  }
  return v;
};
const BASE = env('CONSOLE_BASE').replace(/\/$/, '');
const TOKEN = env('CONSOLE_TOKEN');
const SHOTS = env('SCREENSHOT_DIR');
const OPERATOR = 'playwright';
fs.mkdirSync(SHOTS, { recursive: true });

const log = (msg) => console.log(`[console:${phase}] ${msg}`);
function check(cond, msg) { if (!cond) throw new Error(msg); }
const tid = (id) => `[data-testid="${id}"]`;

let page;
const pageErrors = [];

async function step(name, fn) {
  log(name);
  if (pageErrors.length) throw new Error(`JavaScript error in the page: ${pageErrors.join(' | ')}`);
  try {
    return await fn();
  } catch (e) {
    throw new Error(`step "${name}" failed: ${e.message.split('\n')[0]}`);
  }
}
/** Waits until fn(arg) is truthy in the page; `what` names the expectation in the error. */
async function waitUntil(what, fn, arg) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: WAIT, polling: 250 });
  } catch (e) {
    throw new Error(`timed out after ${WAIT / 1000}s waiting for ${what}`);
  }
}
const text = (sel) => page.locator(sel).first().innerText({ timeout: WAIT });
const shot = async (name, full = true) => {
  await page.screenshot({ path: path.join(SHOTS, name), fullPage: full });
  log(`  screenshot ${name}`);
};
/** Marks the window so that we can prove later that a change arrived without a reload. */
const markWindow = () => page.evaluate(() => { window.__noReload = true; });
const assertNoReload = async () => check(await page.evaluate(() => window.__noReload === true), 'the page was reloaded (live update expected)');
async function noAlert() {
  const a = page.locator(`#alert:not([hidden])`);
  if (await a.count()) throw new Error(`the console shows an error: ${await a.innerText()}`);
}

async function login() {
  await step('sign in through the login form', async () => {
    await page.goto(`${BASE}/console/login`, { timeout: WAIT });
    await page.locator(tid('login-token')).fill(TOKEN);
    await page.locator(tid('login-operator')).fill(OPERATOR);
    await Promise.all([
      page.waitForURL((u) => /\/console\/?$/.test(u.pathname), { timeout: WAIT }),
      page.locator(tid('login-submit')).click(),
    ]);
    await page.locator(tid('nav')).waitFor({ timeout: WAIT });
    await waitUntil(`"signed in as ${OPERATOR}"`, (op) => (document.querySelector('[data-testid=operator]')?.textContent || '').includes(op), OPERATOR);
  });
}

async function phaseDlq() {
  const queue = env('QUEUE');
  const n = Number(env('EXPECT_PARKED'));
  check(Number.isInteger(n) && n > 0, 'EXPECT_PARKED must be a positive integer');
  const after = Number(process.env.EXPECT_PARKED_AFTER ?? 0);
  await login();

  await step(`overview: dead-letters card shows >= ${n}`, async () => {
    await page.goto(`${BASE}/console#/overview`);
    await waitUntil(`dead-letters card >= ${n}`, (n) => Number(document.querySelector('[data-testid=card-dead-letters-value]')?.textContent) >= n, n);
    await page.locator(tid('queues-table')).waitFor({ timeout: WAIT });
    await noAlert();
    await shot('overview.png', false);
  });

  await step('overview: links to the OpenAPI and AsyncAPI documents, which load', async () => {
    for (const [id, doc, version] of [['link-openapi', 'openapi', '3.1'], ['link-asyncapi', 'asyncapi', '3.0']]) {
      const href = await page.locator(tid(id)).getAttribute('href');
      const r = await page.request.get(new URL(href, BASE).toString());
      check(r.ok(), `${href} answered ${r.status()}`);
      const body = await r.json();
      check(String(body[doc] ?? '').startsWith(version), `${href} is not an ${doc} ${version} document`);
    }
  });

  await step('keyboard: skip link first, nav links by Tab, Enter opens Dead letters', async () => {
    await page.goto(`${BASE}/console#/overview`);
    await page.reload(); // a fresh document: sequential focus starts at the top
    await page.locator(tid('card-dead-letters')).waitFor({ timeout: WAIT });
    await page.keyboard.press('Tab');
    const first = await page.evaluate(() => document.activeElement?.dataset.testid);
    check(first === 'skip-link', `first Tab should focus the skip link, focused ${first}`);
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    check(outline && outline !== 'none', 'the focused skip link has no visible outline');
    const seen = [];
    for (let i = 0; i < 20; i++) {
      await page.keyboard.press('Tab');
      const f = await page.evaluate(() => document.activeElement?.dataset.testid || document.activeElement?.tagName);
      seen.push(f);
      if (f === 'nav-dead-letters') break;
    }
    check(seen.includes('nav-overview'), `the Overview nav link was not reached by Tab (focus order: ${seen.join(', ')})`);
    check(seen.at(-1) === 'nav-dead-letters', `the Dead letters nav link was not reached by Tab (focus order: ${seen.join(', ')})`);
    await page.keyboard.press('Enter');
    await waitUntil('the dead-letters page', () => location.hash.startsWith('#/dead-letters') && document.querySelector('[data-testid=nav-dead-letters]').getAttribute('aria-current') === 'page');
    check(await page.locator(`${tid('nav-overview')}[aria-current]`).count() === 0, 'Overview keeps aria-current after navigating');
  });

  await step(`dead letters: select ${queue}, see ${n} messages`, async () => {
    await waitUntil(`queue ${queue} in the selector`, (q) => [...document.querySelectorAll('[data-testid=dlq-queue] option')].some((o) => o.value === q), queue);
    await page.locator(tid('dlq-queue')).selectOption(queue);
    await waitUntil(`${n} matching messages`, (n) => document.querySelector('[data-testid=dlq-matched]')?.textContent === String(n)
      && document.querySelectorAll('[data-testid=dlq-message]').length === Math.min(n, 50), n);
    await noAlert();
  });

  await step('expand the first message: headers table and body', async () => {
    const first = page.locator(tid('dlq-message')).first();
    // Unfold it, again if a live update redrew the list between the click and the check
    // (seen once on a loaded machine).
    const deadline = Date.now() + WAIT;
    while (!(await first.locator(tid('dlq-headers')).isVisible())) {
      check(Date.now() < deadline, 'the first message did not unfold');
      const open = await first.locator('details').first().evaluate((d) => d.open).catch(() => false);
      if (!open) await first.locator('summary').first().click();
      await page.waitForTimeout(250);
    }
    await first.locator(tid('dlq-body')).waitFor({ state: 'visible', timeout: WAIT });
    const zone = await first.locator('time[datetime]').first().evaluate((t) => {
      const d = new Date(t.getAttribute('datetime'));
      return {
        zone: Intl.DateTimeFormat().resolvedOptions().timeZone,
        shown: t.textContent,
        tokyo: d.toLocaleString(undefined, { timeZone: 'Asia/Tokyo' }),
        utc: d.toLocaleString(undefined, { timeZone: 'UTC' }),
      };
    });
    check(zone.zone === 'Asia/Tokyo' && zone.shown === zone.tokyo && zone.shown !== zone.utc,
      `times are not shown in the viewer's zone: ${JSON.stringify(zone)}`);
    const rows = await first.locator(`${tid('dlq-headers')} tbody tr`).count();
    check(rows > 0, 'the headers table is empty');
    check((await first.locator(`${tid('dlq-headers')} th[scope=col]`).count()) > 0, 'the headers table has no <th scope=col>');
    await shot('dead-letters.png');
  });

  await step('narrow window (390x844): no horizontal page scroll', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    const { sw, iw } = await page.evaluate(() => ({ sw: document.documentElement.scrollWidth, iw: innerWidth }));
    check(sw <= iw + 1, `page scrolls horizontally at 390px: scrollWidth ${sw} > innerWidth ${iw}`);
    await shot('dead-letters-narrow.png');
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await step(`replay all matching: the dialog states ${n}, progress ends with "Replayed ${n}"`, async () => {
    await markWindow();
    const btn = page.locator(tid('replay-all'));
    check((await btn.innerText()).includes(`(${n})`), `the button says "${await btn.innerText()}", expected (${n})`);
    await btn.click();
    const dialog = page.locator(`dialog${tid('confirm-dialog')}`);
    await dialog.waitFor({ state: 'visible', timeout: WAIT });
    const said = await dialog.locator(tid('confirm-text')).innerText();
    check(new RegExp(`\\b${n} messages?\\b`).test(said) && said.includes(queue), `the dialog does not state ${n} messages of ${queue}: "${said}"`);
    await dialog.locator(tid('confirm-ok')).click();
    await dialog.waitFor({ state: 'detached', timeout: WAIT });
    await waitUntil('the operation to finish', () => {
      const s = document.querySelector('[data-testid=op-progress]')?.dataset.status;
      return s === 'done' || s === 'failed';
    });
    const status = await page.locator(tid('op-progress')).getAttribute('data-status');
    const result = await text(tid('op-result'));
    check(status === 'done', `the operation ended ${status}: ${result}`);
    check(new RegExp(`Replayed ${n} messages?`).test(result), `expected "Replayed ${n} message(s)", got "${result}"`);
    check((await text(tid('op-progress-text'))).trim() === `${n} / ${n}`, `progress shows "${await text(tid('op-progress-text'))}"`);
    await shot('replay-done.png');
  });

  await step(`live update: the queue shows ${after} parked without a reload`, async () => {
    await waitUntil(`${after} parked`, (a) => document.querySelector('[data-testid=dlq-parked]')?.textContent === String(a), after);
    await assertNoReload();
    await noAlert();
  });
}

async function phaseSaga() {
  const orderNo = env('ORDER_NO');
  await login();
  let sagaId;

  await step(`sagas: search order ${orderNo}, land on its saga`, async () => {
    await page.locator(tid('nav-sagas')).click();
    await page.locator(tid('saga-search')).fill(orderNo);
    await page.locator(tid('saga-search-submit')).click();
    await waitUntil('the saga detail page', () => /^#\/sagas\/[0-9a-f-]{36}$/i.test(location.hash) && !!document.querySelector('[data-testid=saga-status]'));
    sagaId = (await page.evaluate(() => location.hash)).split('/')[2];
    log(`  saga ${sagaId}`);
    const def = (await text(tid('saga-definition'))).trim();
    check(/^([0-9a-f]{12}… |built in )\(current\)$/.test(def), `saga definition "${def}" is not a current version`);
  });

  await step('saga: needs_intervention, failed compensation in the timeline, trace id shown', async () => {
    await waitUntil('status needs_intervention', () => document.querySelector('[data-testid=saga-status]')?.textContent === 'needs_intervention');
    await waitUntil('a failed/compensation timeline row', () => [...document.querySelectorAll('[data-testid=timeline-row]')]
      .some((r) => /fail|compensat/i.test(r.dataset.event || '') || (r.dataset.action === 'compensate' && /fail/i.test(r.textContent))));
    const trace = (await text(tid('trace-id'))).trim();
    check(/^[0-9a-f]{32}$/.test(trace), `trace id "${trace}" is not 32 hex digits`);
    check(await page.locator(`${tid('timeline')} th[scope=col]`).count() >= 6, 'the timeline table lacks column headers');
    check(await page.locator(`${tid('steps-table')} th[scope=col]`, { hasText: 'Result' }).count() === 1, 'the steps table has no Result column');
    check(await page.locator(`${tid('timeline')} th[scope=col]`, { hasText: 'Result' }).count() === 1, 'the timeline has no Result column');
    await noAlert();
    await shot('saga.png');
  });

  await step('interventions: retry compensation with a note', async () => {
    await page.locator(tid('nav-interventions')).click();
    const row = page.locator(`${tid('intervention-row')}[data-saga-id="${sagaId}"]`).first();
    await row.waitFor({ timeout: WAIT });
    await shot('interventions.png');
    await row.locator(tid('intervention-retry')).click();
    const dialog = page.locator(`dialog${tid('confirm-dialog')}`);
    await dialog.waitFor({ state: 'visible', timeout: WAIT });
    await dialog.locator(tid('confirm-note')).fill('retried from the console by playwright');
    await dialog.locator(tid('confirm-ok')).click();
    await dialog.waitFor({ state: 'detached', timeout: WAIT });
    await waitUntil('the retry result', () => (document.querySelector('[data-testid=intervention-result]')?.textContent || '') !== ''
      || !document.querySelector('#alert').hidden);
    await noAlert();
    log(`  ${await text(tid('intervention-result'))}`);
  });

  await step('saga: becomes compensated with the operator retry in the timeline (no reload)', async () => {
    await markWindow();
    // The retried intervention may leave the open list at once; the result links to its saga.
    await page.locator(tid('intervention-saga-link')).click();
    await waitUntil('status compensated', () => document.querySelector('[data-testid=saga-status]')?.textContent === 'compensated');
    await waitUntil('the operator retry in the timeline', (op) => [...document.querySelectorAll('[data-testid=timeline-row]')]
      .some((r) => r.textContent.includes(op) || /retr/i.test(r.dataset.event || '') || /retr|operator|manual/i.test(r.dataset.action || '')), OPERATOR);
    await assertNoReload();
    await noAlert();
    await shot('saga-compensated.png');
  });

  await step('audit: intervention.retry by playwright and a dlq.replay', async () => {
    await page.locator(tid('nav-audit')).click();
    // The backend records the actor as "<operator> (console, <token name>)".
    await waitUntil('intervention.retry by playwright', (op) => [...document.querySelectorAll('[data-testid=audit-row][data-action="intervention.retry"]')]
      .some((r) => r.dataset.actor === op || r.dataset.actor.startsWith(`${op} (`)), OPERATOR);
    await waitUntil('a dlq.replay row', () => !!document.querySelector('[data-testid=audit-row][data-action="dlq.replay"]'));
    await noAlert();
    await shot('audit.png');
  });
}

async function phaseSubscriptions() {
  const name = env('SUBSCRIPTION');
  const row = () => page.locator(`${tid('subscription-row')}[data-subscription="${name}"]`);
  /** The subscription's row in GET /v1/subscriptions, fetched in the page (session cookie + console header). */
  const listed = () => page.evaluate(async (n) => {
    const r = await fetch('/v1/subscriptions', { credentials: 'same-origin', headers: { 'x-warren-console': '1' } });
    return (await r.json()).subscriptions.find((s) => s.name === n);
  }, name);
  await login();

  await step(`subscriptions: ${name} listed, running, its worker's breaker closed`, async () => {
    await page.locator(tid('nav-subscriptions')).click();
    await waitUntil(`${name} running`, (n) => document.querySelector(`[data-testid=subscription-row][data-subscription="${n}"]`)?.dataset.state === 'running', name);
    await waitUntil('a worker with a closed breaker', (n) => !!document.querySelector(`[data-testid=subscription-row][data-subscription="${n}"] [data-testid=subscription-worker][data-breaker=closed]`), name);
    const link = await row().locator(tid('subscription-dead-letters')).getAttribute('href');
    check(link === `#/dead-letters?queue=${encodeURIComponent(`warren.sub.${name}`)}`, `the dead-letters link is ${link}`);
    check(await page.locator(`${tid('subscriptions-table')} th[scope=col]`).count() >= 8, 'the table lacks column headers');
    await noAlert();
    await shot('subscriptions.png');
  });

  await step('pause with a reason: the API shows it paused', async () => {
    await markWindow();
    await row().locator(tid('subscription-pause')).click();
    const dialog = page.locator(`dialog${tid('confirm-dialog')}`);
    await dialog.waitFor({ state: 'visible', timeout: WAIT });
    await dialog.locator(tid('confirm-note')).fill('paused from the console by playwright');
    await dialog.locator(tid('confirm-ok')).click();
    await dialog.waitFor({ state: 'detached', timeout: WAIT });
    await waitUntil(`${name} paused`, (n) => document.querySelector(`[data-testid=subscription-row][data-subscription="${n}"]`)?.dataset.state === 'paused', name);
    const s = await listed();
    check(s && s.paused === true, `the API does not show it paused: ${JSON.stringify(s)}`);
    check(s.control.reason === 'paused from the console by playwright', `reason ${JSON.stringify(s.control)}`);
    check(s.control.by.startsWith(`${OPERATOR} (`), `paused by ${s.control.by}`);
    check(await row().locator(tid('subscription-resume')).isEnabled(), 'Resume is not enabled');
    check(await row().locator(tid('subscription-pause')).isDisabled(), 'Pause is still enabled');
    await waitUntil('the worker holding it', (n) => !!document.querySelector(`[data-testid=subscription-row][data-subscription="${n}"] [data-testid=subscription-worker] .badge-paused`), name);
    await assertNoReload();
    await noAlert();
    await shot('subscription-paused.png');
  });

  await step('resume: running again', async () => {
    await row().locator(tid('subscription-resume')).click();
    await waitUntil(`${name} running`, (n) => document.querySelector(`[data-testid=subscription-row][data-subscription="${n}"]`)?.dataset.state === 'running', name);
    const s = await listed();
    check(s && s.paused === false, `the API still shows it paused: ${JSON.stringify(s)}`);
    log(`  ${await text(tid('subscription-result'))}`);
    await noAlert();
  });
}

const phases = { dlq: phaseDlq, saga: phaseSaga, subscriptions: phaseSubscriptions };
if (!phases[phase]) {
  console.error(`usage: node run.mjs ${Object.keys(phases).join('|')}`);
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  timeout: WAIT,
});
let code = 0;
try {
  // The viewer is in Tokyo (UTC+9, no summer time): times must be shown in that zone.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: 'Asia/Tokyo' });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => { pageErrors.push(e.message); log(`  page error: ${e.message}`); });
  // Failed requests are expected (the 400 confirmation_required of a dry run); log other errors.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) log(`  browser console: ${m.text()}`); });
  await phases[phase]();
  if (pageErrors.length) throw new Error(`JavaScript error in the page: ${pageErrors.join(' | ')}`);
  log('ok');
} catch (e) {
  code = 1;
  console.error(`[console:${phase}] FAILED: ${e.message}`);
  if (page) await page.screenshot({ path: path.join(SHOTS, `failure-${phase}.png`), fullPage: true }).catch(() => {});
} finally {
  await browser.close().catch(() => {});
}
process.exit(code);
