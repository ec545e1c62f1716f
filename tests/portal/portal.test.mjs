// The portal in headless Chromium, against a live `candor standalone` that
// tests/portal.rs started and filled with simulated staff. Each role signs
// in and sees exactly the API's numbers for its scope; an employee cannot
// reach another's page; a manager in team_only mode sees no per-person
// series; sign-out ends the session; forged, expired, revoked and
// cross-origin uses of the cookie are refused; axe-core finds no serious
// accessibility violation on any page. Exits non-zero on the first failure.
//
// Input (environment): PORTAL_URL, PORTAL_CONFIG (JSON, see tests/portal.rs),
// CHROMIUM (the browser), SCREENSHOTS (a folder to write the README's
// screenshots to; none if unset).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const url = process.env.PORTAL_URL;
const config = JSON.parse(process.env.PORTAL_CONFIG);
const range = `from=${config.from}&to=${config.to}`;
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const shots = process.env.SCREENSHOTS;

let failures = 0;
function check(ok, what, detail) {
  if (ok) {
    console.log('ok   ' + what);
  } else {
    failures++;
    console.log('FAIL ' + what + (detail === undefined ? '' : ': ' + JSON.stringify(detail).slice(0, 2000)));
  }
}
const equal = (a, b, what) => check(JSON.stringify(a) === JSON.stringify(b), what, { page: a, api: b });

async function api(token, path, options = {}) {
  const headers = Object.assign({ authorization: 'Bearer ' + token }, options.headers || {});
  const response = await fetch(url + path, Object.assign({}, options, { headers }));
  const body = (response.headers.get('content-type') || '').includes('json') ? await response.json() : null;
  if (!response.ok && !options.allowError) throw new Error(`${path}: ${response.status} ${JSON.stringify(body)}`);
  return { status: response.status, body };
}

// A bare request with a cookie and whatever else a browser elsewhere might send.
async function withCookie(cookie, path, options = {}) {
  const headers = Object.assign({ cookie: 'candor_session=' + cookie }, options.headers || {});
  const response = await fetch(url + path, Object.assign({}, options, { headers }));
  const body = (response.headers.get('content-type') || '').includes('json') ? await response.json() : null;
  return { status: response.status, reason: body && body.reason };
}

async function allRows(token, kpi, groupBy) {
  const { body } = await api(token, `/v1/kpi/${kpi}?${range}&group_by=${groupBy}&limit=1000`);
  return body.rows;
}

// Rows of a page's table: the data-value of numeric cells, the text of others.
async function tableRows(page, testid, keys) {
  return page.$$eval(`[data-testid="${testid}"] tbody tr`, (trs, keys) => trs.map((tr) => keys.map((k) => {
    const td = tr.querySelector(`td[data-key="${k}"]`);
    if (!td) return null;
    return td.hasAttribute('data-value') ? Number(td.getAttribute('data-value')) : td.textContent;
  })), keys);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// A fresh browser profile signed in with `token`, watching what it asks and
// whether any policy blocks it.
async function signedIn(token, role) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const requests = [];
  const blocked = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('console', (m) => { if (/Content Security Policy|Refused to/.test(m.text())) blocked.push(m.text()); });
  page.on('pageerror', (e) => blocked.push('page error: ' + e.message));
  await page.goto(url + '/');
  await page.waitForSelector('#token');
  if (role === 'sign-in') return { context, page, requests, blocked };
  await page.fill('#token', token);
  await page.click('form button[type=submit]');
  await page.waitForSelector('#sign-out:not([hidden])');
  return { context, page, requests, blocked };
}

async function show(page, hash, testid) {
  await page.goto(url + '/' + hash);
  try {
    // A guard, not a timing: a debug build answering on a loaded 2-core
    // machine (a build beside it) has taken over 20 s for one page.
    await page.waitForSelector(testid ? `[data-testid="${testid}"]` : 'main h1', { timeout: 90000 });
  } catch (e) {
    throw new Error(`${hash}: no ${testid} on the page, which says: ${(await page.textContent('main')).slice(0, 500)}`);
  }
}

async function accessible(page, what) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => window.axe.run(document, { resultTypes: ['violations'] }));
  const serious = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(serious.length === 0, `axe: no serious violation on ${what}`, serious.map((v) => ({ id: v.id, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.html) })));
}

async function screenshot(page, name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png` });
}

async function noOtherTenant(page, what) {
  const text = await page.textContent('body');
  const seen = config.other_tenant_words.filter((w) => text.includes(w));
  check(seen.length === 0, `${what}: nothing of the other tenant`, seen);
}

const t = config.tokens;

// ---- Headers ------------------------------------------------------------------
{
  const response = await fetch(url + '/');
  const csp = response.headers.get('content-security-policy') || '';
  check(csp.includes("script-src 'self'") && !csp.includes('unsafe-inline') && csp.includes("frame-ancestors 'none'"), 'the page has a CSP without inline script, no framing', csp);
  check(response.headers.get('x-frame-options') === 'DENY', 'X-Frame-Options DENY');
  const kpi = await fetch(url + `/v1/kpi/activity?${range}`, { headers: { authorization: 'Bearer ' + t.owner } });
  check(kpi.headers.get('cache-control') === 'no-store', 'API answers are not cached');
}

// ---- The sign-in page -------------------------------------------------------------
{
  const s = await signedIn(null, 'sign-in');
  await accessible(s.page, 'the sign-in page');
  await screenshot(s.page, 'sign-in');
  await s.page.fill('#token', 'candor.acme.' + '0'.repeat(64));
  await s.page.click('form button[type=submit]');
  await s.page.waitForSelector('[role=alert]:has-text("unknown token")');
  check(true, 'a forged token is refused at sign-in');
  await s.context.close();
}

// ---- Team views: manager, HR, analyst, owner ----------------------------------------
const teamKeys = ['department', 'day', 'tracked_s', 'active_s', 'idle_s'];
const peopleKeys = ['employee', 'tracked_s', 'active_s'];
for (const role of ['manager', 'hr', 'analyst', 'owner']) {
  const s = await signedIn(t[role], role);
  await show(s.page, `#/team?${range}`, 'team-activity');
  const expected = (await allRows(t[role], 'activity', 'department,day')).map((r) => teamKeys.map((k) => r[k]));
  equal(await tableRows(s.page, 'team-activity', teamKeys), expected, `${role}: activity by department and day equals the API's`);
  const people = (await allRows(t[role], 'activity', 'employee')).map((r) => [r.employee || r.subject, r.tracked_s, r.active_s]);
  equal(await tableRows(s.page, 'team-people', peopleKeys), people, `${role}: activity per person equals the API's`);
  if (role === 'manager') {
    const departments = new Set((await tableRows(s.page, 'team-activity', ['department'])).map((r) => r[0]));
    equal([...departments], config.manager_departments, 'manager: only the departments they manage');
    // Per week: the page asks for whole weeks around the range.
    const day = 86400000;
    const weekday = (d) => (new Date(d + 'T00:00:00Z').getUTCDay() + 6) % 7;
    const monday = new Date(Date.parse(config.from) - weekday(config.from) * day).toISOString().slice(0, 10);
    const sunday = new Date(Date.parse(config.to) + (6 - weekday(config.to)) * day).toISOString().slice(0, 10);
    await show(s.page, `#/team?${range}&period=week`, 'team-activity');
    const weekKeys = ['department', 'week', 'tracked_s', 'active_s', 'idle_s'];
    const { body } = await api(t.manager, `/v1/kpi/activity?from=${monday}&to=${sunday}&group_by=department,week&limit=1000`);
    const weeks = body.rows.map((r) => weekKeys.map((k) => r[k]));
    check(weeks.length > 0, 'manager: there are weeks');
    equal(await tableRows(s.page, 'team-activity', weekKeys), weeks, "manager: activity by department and week equals the API's");
    await show(s.page, `#/team?${range}`, 'team-activity');
  }
  if (role === 'analyst') {
    const shown = (await tableRows(s.page, 'team-people', ['employee'])).map((r) => r[0]);
    check(shown.every((p) => !config.employee_ids.includes(p)), 'analyst: pseudonyms only, no employee id', shown);
  }
  await noOtherTenant(s.page, role);
  await accessible(s.page, `the team page (${role})`);
  if (role === 'manager') await screenshot(s.page, 'team');
  if (role === 'owner') {
    await show(s.page, '#/admin', 'audit-status');
    const status = await s.page.textContent('[data-testid="audit-status"]');
    check(/verifies: \d+ entries/.test(status), 'owner: the audit trail verifies', status);
    const kinds = (await tableRows(s.page, 'tokens', ['kind'])).map((r) => r[0]);
    check(kinds.includes('session') && kinds.includes('api'), 'owner: tokens and sessions listed', kinds);
    await accessible(s.page, 'the admin page');
    await screenshot(s.page, 'admin');
  }
  check(s.blocked.length === 0, `${role}: nothing blocked by the CSP, no script error`, s.blocked);
  await s.context.close();
}

// ---- The employee -------------------------------------------------------------------
{
  const s = await signedIn(t.employee, 'employee');
  await show(s.page, `#/me?${range}`, 'my-activity');
  const expected = (await allRows(t.employee, 'activity', 'employee,day')).map((r) => ['day', 'tracked_s', 'active_s', 'idle_s'].map((k) => r[k]));
  check(expected.length > 0, 'employee: has days of activity');
  equal(await tableRows(s.page, 'my-activity', ['day', 'tracked_s', 'active_s', 'idle_s']), expected, "employee: my activity equals the API's");
  const never = await s.page.textContent('[data-testid="never-recorded"]');
  check(never.includes('keystrokes') && never.includes('screenshots'), 'employee: the page says what is never recorded');
  await s.page.waitForSelector('[data-testid="access"] tbody tr');
  const lookers = new Set((await tableRows(s.page, 'access', ['role'])).map((r) => r[0]));
  check(['manager', 'hr', 'owner', 'analyst'].every((r) => lookers.has(r)), 'employee: who looked at my data lists the manager, HR, the analyst and the owner', [...lookers]);
  await noOtherTenant(s.page, 'employee');
  await accessible(s.page, 'my data');
  await screenshot(s.page, 'my-data');
  // Another employee's page, by URL: not available, and nothing of theirs.
  await show(s.page, `#/team/person/${config.other_employee}?${range}`);
  check((await s.page.textContent('main h1')) === 'Not available', "employee: another employee's page is not available");
  check(!(await s.page.textContent('main')).includes(config.other_employee), "employee: nothing of the other employee is shown");
  // Sign-out ends the session: its cookie is refused afterwards.
  const cookie = (await s.context.cookies()).find((c) => c.name === 'candor_session');
  check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict' && cookie.path === '/', 'the session cookie is HttpOnly, SameSite=Strict', cookie);
  check((await withCookie(cookie.value, '/v1/session')).status === 200, 'the cookie works before sign-out');
  // Used from another site, or to change something without this origin.
  const cross = await withCookie(cookie.value, `/v1/kpi/activity?${range}&group_by=employee,day`, { headers: { 'sec-fetch-site': 'cross-site' } });
  equal([cross.status, cross.reason], [403, 'cross_origin'], 'a cross-site request with the cookie is refused');
  const foreign = await withCookie(cookie.value, '/v1/session', { method: 'DELETE', headers: { origin: 'http://evil.example' } });
  equal([foreign.status, foreign.reason], [403, 'cross_origin'], 'a change from another origin is refused');
  const bare = await withCookie(cookie.value, '/v1/session', { method: 'DELETE' });
  equal([bare.status, bare.reason], [403, 'cross_origin'], 'a change without an Origin is refused');
  await s.page.click('#sign-out');
  await s.page.waitForSelector('main h1:has-text("Sign in")');
  const after = await withCookie(cookie.value, '/v1/session');
  check(after.status === 401, 'after sign-out the session is refused', after);
  await s.context.close();
}

// ---- Cookies that are not sessions ---------------------------------------------------
{
  const forged = await withCookie('candor.acme.' + 'ab'.repeat(32), '/v1/session');
  equal([forged.status, forged.reason], [401, 'unknown_token'], 'a forged cookie is refused');
  const apiToken = await withCookie(t.owner, '/v1/session');
  check(apiToken.status === 401, 'an API token in the cookie is refused', apiToken);
  // A session of a token about to expire ends with it.
  const soon = await api(t.owner, '/v1/admin/tokens', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'short', role: 'employee', employee: config.employee, expires_at_ms: Date.now() + 3000 }),
  });
  const opened = await fetch(url + '/v1/session', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: soon.body.token }) });
  const session = (opened.headers.get('set-cookie') || '').match(/candor_session=([^;]+)/)[1];
  check((await withCookie(session, '/v1/session')).status === 200, 'a session of a short token works at first');
  let expired;
  for (let i = 0; i < 100; i++) {
    expired = await withCookie(session, '/v1/session');
    if (expired.status !== 200) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  equal([expired.status, expired.reason], [401, 'expired_token'], 'it is refused once its token expired');
  // Revoking the token a session was opened with ends the session.
  const hrSession = await fetch(url + '/v1/session', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: t.revocable }) });
  const revocable = (hrSession.headers.get('set-cookie') || '').match(/candor_session=([^;]+)/)[1];
  check((await withCookie(revocable, '/v1/session')).status === 200, 'a session of a token works');
  const { body: listed } = await api(t.owner, '/v1/admin/tokens');
  const id = listed.tokens.find((x) => x.name === 'revocable').id;
  await api(t.owner, '/v1/admin/tokens/' + id, { method: 'DELETE' });
  const revoked = await withCookie(revocable, '/v1/session');
  equal([revoked.status, revoked.reason], [401, 'session_ended'], 'it is refused once its token is revoked');
}

// ---- A one-time sign-in link ----------------------------------------------------------
{
  const first = await browser.newContext();
  const page = await first.newPage();
  await page.goto(config.sign_in_link);
  await page.waitForSelector('main h1:has-text("My data")');
  check(!page.url().includes('sign-in='), 'the link signs in and leaves the address');
  const second = await browser.newContext();
  const again = await second.newPage();
  await again.goto(config.sign_in_link);
  await again.waitForSelector('[role=alert]:has-text("did not work")');
  check(true, 'the link works once only');
  await first.close();
  await second.close();
}

// ---- team_only: the manager sees groups only -------------------------------------------
{
  const { body: tenant } = await api(t.owner, '/v1/admin/tenant');
  const doc = Object.assign({}, tenant.document, { privacy_mode: 'team_only', extract_k: 2 });
  await api(t.owner, '/v1/admin/tenant', { method: 'PUT', headers: { 'content-type': 'application/json', 'if-match': String(tenant.version) }, body: JSON.stringify(doc) });
  const s = await signedIn(t.manager, 'manager');
  s.requests.length = 0;
  await show(s.page, `#/team?${range}`, 'groups-only');
  check((await s.page.$('[data-testid="team-people"]')) === null, 'team_only: the manager gets no per-person table');
  const perPerson = s.requests.filter((r) => /group_by=[^&]*employee/.test(decodeURIComponent(r)));
  check(perPerson.length === 0, 'team_only: the page asks for no per-person series', perPerson);
  const expected = (await allRows(t.manager, 'activity', 'department,day')).map((r) => teamKeys.map((k) => r[k]));
  equal(await tableRows(s.page, 'team-activity', teamKeys), expected, "team_only: the groups equal the API's");
  await accessible(s.page, 'the team page in team_only');
  await screenshot(s.page, 'team-only');
  await show(s.page, `#/team/person/${config.employee}?${range}`);
  check((await s.page.textContent('main h1')) === 'Not available', "team_only: a person's page is not available to the manager");
  check(s.blocked.length === 0, 'team_only: nothing blocked', s.blocked);
  await s.context.close();
}

await browser.close();
if (failures) {
  console.log(`${failures} portal check(s) failed`);
  process.exit(1);
}
console.log('every portal check passed');
