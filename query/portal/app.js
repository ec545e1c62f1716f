// Candor portal. Every figure comes from the public API (query/api/openapi.json),
// called with the signed-in session's cookie, so a page shows exactly what an
// API caller of that role may get. No inline script; every element is built
// with the DOM, never from HTML strings, so no data can become markup.
'use strict';

(function () {
  const main = document.getElementById('main');
  const nav = document.getElementById('nav');
  const whoEl = document.getElementById('who');
  const signOut = document.getElementById('sign-out');
  const charts = [];
  let me = null;

  // ---- DOM and formatting helpers -------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const hours = (s) => (s / 3600).toFixed(2);
  const pct = (x) => x.toFixed(1) + ' %';
  const iso = (d) => d.toISOString().slice(0, 10);
  const when = (ms) => new Date(ms).toISOString().replace('T', ' ').slice(0, 16) + ' UTC';

  // A table whose numeric cells carry their exact value in data-value.
  function table(caption, columns, rows, testid) {
    const head = h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null, text: c.label })));
    const body = rows.map((r) => h('tr', {}, columns.map((c) => {
      const raw = c.value(r);
      const shown = c.format ? c.format(raw, r) : raw;
      return h('td', { class: c.num ? 'num' : null, 'data-key': c.key, 'data-value': c.num ? raw : null }, shown === null || shown === undefined ? '' : shown);
    })));
    return h('table', { 'data-testid': testid }, h('caption', { text: caption }), h('thead', {}, head), h('tbody', {}, body));
  }

  function csvButton(name, columns, rows) {
    return h('button', {
      type: 'button',
      class: 'secondary',
      onclick: () => {
        const quote = (v) => {
          const s = v === null || v === undefined ? '' : String(v);
          return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
        };
        const lines = [columns.map((c) => quote(c.label)).join(',')];
        for (const r of rows) lines.push(columns.map((c) => quote(c.value(r))).join(','));
        const url = URL.createObjectURL(new Blob([lines.join('\n') + '\n'], { type: 'text/csv' }));
        const a = h('a', { href: url, download: name + '.csv' });
        document.body.append(a);
        a.click();
        a.remove();
        URL.revokeObjectURL(url);
      },
    }, 'Download CSV');
  }

  function chart(label, config) {
    const canvas = h('canvas', { role: 'img', 'aria-label': label });
    const box = h('div', { class: 'chart' }, canvas);
    if (window.Chart) {
      config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options || {});
      charts.push(new window.Chart(canvas, config));
    }
    return box;
  }

  // ---- API -------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || 'HTTP ' + status);
      this.status = status;
      this.reason = body && body.reason;
    }
  }

  async function api(path, options) {
    let response;
    // The node runs a few statements per tenant at once; a busy answer says
    // when to ask again.
    for (let attempt = 0; ; attempt++) {
      response = await fetch(path, Object.assign({ credentials: 'same-origin' }, options || {}));
      if (response.status !== 429 || attempt === 5) break;
      const wait = Number(response.headers.get('retry-after')) || 1;
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
    if (response.status === 204) return null;
    const type = response.headers.get('content-type') || '';
    const body = type.includes('json') ? await response.json() : await response.text();
    if (!response.ok) {
      if (response.status === 401 && !path.startsWith('/v1/session')) {
        me = null;
        render();
      }
      throw new ApiError(response.status, body);
    }
    return options && options.withHeaders ? { body, headers: response.headers } : body;
  }

  const json = (method, value, extra) => Object.assign({
    method,
    headers: Object.assign({ 'content-type': 'application/json' }, (extra && extra.headers) || {}),
    body: JSON.stringify(value),
  });

  // Every row of a KPI over `range`, page after page.
  async function kpi(name, groupBy, range) {
    const rows = [];
    let offset = 0;
    let answer;
    for (;;) {
      const q = new URLSearchParams({ from: range.from, to: range.to, group_by: groupBy, limit: '1000', offset: String(offset) });
      answer = await api('/v1/kpi/' + name + '?' + q);
      rows.push(...answer.rows);
      if (answer.next_offset === null || answer.next_offset === undefined) break;
      offset = answer.next_offset;
    }
    return { rows, suppressed: answer.suppressed_rows, privacyMode: answer.privacy_mode };
  }

  // ---- Routing -----------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#/, '');
    const [path, query] = hash.split('?');
    return { parts: path.split('/').filter(Boolean), params: new URLSearchParams(query || '') };
  }

  // The days asked for, per day or per week; weeks are whole (Monday to
  // Sunday), as a tenant in team_only requires.
  function rangeOf(params) {
    const period = params.get('period') === 'week' ? 'week' : 'day';
    let to = params.get('to') || iso(new Date());
    let from = params.get('from') || iso(new Date(Date.parse(to) - 13 * 86400000));
    if (period === 'week') {
      const weekday = (d) => (new Date(d + 'T00:00:00Z').getUTCDay() + 6) % 7; // Monday 0
      from = iso(new Date(Date.parse(from) - weekday(from) * 86400000));
      to = iso(new Date(Date.parse(to) + (6 - weekday(to)) * 86400000));
    }
    return { from, to, period };
  }

  function views() {
    if (!me) return [];
    const out = [];
    // A manager's token answers for their departments; their own page is
    // an employee token's.
    if (me.role === 'employee') out.push(['me', 'My data']);
    if (me.role !== 'employee' && me.role !== 'ai') out.push(['team', 'Team']);
    if (me.role === 'owner' || me.role === 'admin') out.push(['admin', 'Admin']);
    return out;
  }

  function rangeForm(view, range) {
    const from = h('input', { type: 'date', name: 'from', value: range.from, required: true });
    const to = h('input', { type: 'date', name: 'to', value: range.to, required: true });
    const period = h('select', { name: 'period' },
      h('option', { value: 'day', selected: range.period === 'day' }, 'day'),
      h('option', { value: 'week', selected: range.period === 'week' }, 'week (whole weeks)'));
    return h('form', {
      class: 'range',
      onsubmit: (e) => {
        e.preventDefault();
        location.hash = `#/${view}?from=${from.value}&to=${to.value}&period=${period.value}`;
      },
    }, h('label', {}, 'From', from), h('label', {}, 'To', to), h('label', {}, 'Per', period), h('button', { type: 'submit' }, 'Show'));
  }

  // Renders run one after another as the address changes; only the latest
  // one may write the page.
  let generation = 0;

  async function render() {
    const mine = ++generation;
    while (charts.length) charts.pop().destroy();
    nav.replaceChildren();
    signOut.hidden = !me;
    whoEl.textContent = me ? `${me.role}${me.employee ? ' · ' + me.employee : ''} · ${me.tenant}` : '';
    if (!me) {
      main.replaceChildren(signInView());
      return;
    }
    const { parts, params } = route();
    const allowed = views();
    const view = parts[0] || (allowed[0] && allowed[0][0]);
    for (const [id, label] of allowed) {
      nav.append(h('a', { href: '#/' + id, 'aria-current': id === view ? 'page' : null }, label));
    }
    main.replaceChildren(h('p', {}, 'Loading…'));
    const known = allowed.some(([id]) => id === view);
    try {
      let content;
      if (!known) content = notAvailable();
      else if (view === 'me') content = await myData(rangeOf(params));
      else if (view === 'team' && parts[1] === 'person') content = await person(decodeURIComponent(parts[2] || ''), rangeOf(params));
      else if (view === 'team') content = await team(rangeOf(params));
      else content = await admin();
      if (mine !== generation) return;
      main.replaceChildren(content);
    } catch (e) {
      if (mine !== generation) return;
      main.replaceChildren(h('h1', {}, 'Something went wrong'), h('p', { role: 'alert' }, e.message));
    }
    main.focus({ preventScroll: true });
  }

  function notAvailable() {
    return h('div', {}, h('h1', {}, 'Not available'), h('p', { role: 'alert' }, 'This page is not available to your role.'));
  }

  // ---- Sign-in -----------------------------------------------------------------

  function signInView() {
    const token = h('input', { type: 'password', name: 'token', id: 'token', autocomplete: 'off', required: true });
    const error = h('p', { role: 'alert' });
    return h('div', { class: 'signin' },
      h('h1', {}, 'Sign in'),
      h('p', {}, 'Paste the access token you were given, or open the sign-in link you received.'),
      h('form', {
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            await signIn(token.value);
          } catch (err) {
            error.textContent = err.message;
          }
        },
      }, h('label', { for: 'token' }, 'Access token'), token, h('p', {}, h('button', { type: 'submit' }, 'Sign in'))),
      error);
  }

  async function signIn(token) {
    me = await api('/v1/session', json('POST', { token }));
    location.hash = '#/';
    await render();
  }

  signOut.addEventListener('click', async () => {
    try {
      await api('/v1/session', { method: 'DELETE' });
    } finally {
      me = null;
      location.hash = '#/';
      render();
    }
  });

  // ---- My data ------------------------------------------------------------------

  const activityColumns = (first) => [
    first,
    { key: 'tracked_s', label: 'Tracked (h)', num: true, value: (r) => r.tracked_s, format: hours },
    { key: 'active_s', label: 'Active (h)', num: true, value: (r) => r.active_s, format: hours },
    { key: 'idle_s', label: 'Idle (h)', num: true, value: (r) => r.idle_s, format: hours },
    { key: 'activity_pct', label: 'Activity', num: true, value: (r) => r.activity_pct, format: pct },
  ];
  // The period column: the day, or the Monday that starts the week.
  const periodColumn = (range) => (range.period === 'week'
    ? { key: 'week', label: 'Week of', value: (r) => r.week }
    : { key: 'day', label: 'Day', value: (r) => r.day });

  function activityChart(label, rows, keyOf) {
    const keys = [...new Set(rows.map(keyOf))];
    const sum = (k, f) => rows.filter((r) => keyOf(r) === k).reduce((a, r) => a + r[f], 0) / 3600;
    return chart(label, {
      type: 'bar',
      data: {
        labels: keys,
        datasets: [
          { label: 'Active hours', data: keys.map((k) => sum(k, 'active_s')), backgroundColor: '#0b4f8a' },
          { label: 'Idle hours', data: keys.map((k) => sum(k, 'idle_s')), backgroundColor: '#9bb7d4' },
        ],
      },
      options: { scales: { x: { stacked: true }, y: { stacked: true } } },
    });
  }

  async function myData(range) {
    // One question at a time: the node caps a tenant's concurrent statements.
    const by = 'employee,' + range.period;
    const dayColumn = periodColumn(range);
    const activity = await kpi('activity', by, range);
    const attendance = await kpi('attendance', by, range);
    const apps = await kpi('apps', 'employee', range);
    const gps = await kpi('gps', by, range);
    const recorded = await api('/v1/me/recorded');
    const access = await api('/v1/me/access');
    const total = (f) => activity.rows.reduce((a, r) => a + r[f], 0);
    const tracked = total('tracked_s');
    const active = total('active_s');
    const out = h('div', {},
      h('h1', {}, 'My data'),
      h('p', {}, `What Candor holds about you, ${me.employee}, from ${range.from} to ${range.to}.`),
      rangeForm('me', range),
      h('h2', {}, 'Activity'),
      h('dl', { class: 'cards' },
        h('div', {}, h('dt', {}, 'Tracked'), h('dd', { 'data-testid': 'tracked-total', 'data-value': tracked }, hours(tracked) + ' h')),
        h('div', {}, h('dt', {}, 'Active'), h('dd', {}, hours(active) + ' h')),
        h('div', {}, h('dt', {}, 'Activity'), h('dd', {}, tracked ? pct((100 * active) / tracked) : '–'))),
      activityChart(`Your active and idle hours per ${range.period}`, activity.rows, dayColumn.value),
      table(`Your activity per ${range.period}`, activityColumns(dayColumn), activity.rows, 'my-activity'),
      h('h2', {}, 'Attendance'),
      table('Your days', [
        dayColumn,
        { key: 'first_activity', label: 'First activity', value: (r) => r.first_activity },
        { key: 'last_activity', label: 'Last activity', value: (r) => r.last_activity },
        { key: 'present_days', label: 'Days present', num: true, value: (r) => r.present_days },
        { key: 'late_days', label: 'Days late', num: true, value: (r) => r.late_days },
        { key: 'absent_days', label: 'Days absent', num: true, value: (r) => r.absent_days },
      ], attendance.rows, 'my-attendance'),
      h('h2', {}, 'Apps'),
      appsSection('Your app time', apps.rows, 'my-apps'));
    if (gps.rows.length) {
      out.append(h('h2', {}, 'Travel'), table(`Your travel per ${range.period}`, [
        dayColumn,
        { key: 'distance_km', label: 'Distance (km)', num: true, value: (r) => r.distance_km, format: (v) => v.toFixed(1) },
        { key: 'stops', label: 'Stops', num: true, value: (r) => r.stops },
        { key: 'on_site_s', label: 'On sites (h)', num: true, value: (r) => r.on_site_s, format: hours },
      ], gps.rows, 'my-gps'));
    }
    out.append(recordedSection(recorded), accessSection(access));
    return out;
  }

  function appsSection(caption, rows, testid) {
    const categories = {};
    const top = [];
    for (const r of rows) {
      for (const [c, s] of Object.entries(r.seconds_by_category)) categories[c] = (categories[c] || 0) + s;
      top.push(...r.top_apps);
    }
    const names = Object.keys(categories).sort();
    const box = h('div', {});
    if (names.length) {
      box.append(chart(caption + ' by category', {
        type: 'doughnut',
        data: { labels: names, datasets: [{ data: names.map((n) => categories[n] / 3600), backgroundColor: ['#0b4f8a', '#7a7a7a', '#b35c00'] }] },
      }));
    }
    box.append(table(caption + ' by category', [
      { key: 'category', label: 'Category', value: (n) => n },
      { key: 'seconds', label: 'Hours', num: true, value: (n) => categories[n], format: hours },
    ], names, testid));
    if (top.length) {
      box.append(table('Most used apps', [
        { key: 'app', label: 'App', value: (a) => a.app + (a.host ? ' (' + a.host + ')' : '') },
        { key: 'category', label: 'Category', value: (a) => a.category },
        { key: 'seconds', label: 'Hours', num: true, value: (a) => a.seconds, format: hours },
      ], top, testid + '-top'));
    }
    return box;
  }

  function recordedSection(r) {
    return h('section', {},
      h('h2', {}, 'What Candor records'),
      h('p', {}, `Kept for ${r.kept_days} days, then deleted. ` + (r.track_outside_work_hours
        ? 'This organisation keeps activity at any hour.'
        : `Only time within work hours (${r.work_hours.start}–${r.work_hours.end}) is kept.`)),
      table('Recorded', [
        { key: 'field', label: 'Field', value: (f) => f.field },
        { key: 'meaning', label: 'What it is', value: (f) => f.meaning },
      ], r.recorded, 'recorded'),
      h('h3', {}, 'Never recorded'),
      h('ul', { 'data-testid': 'never-recorded' }, r.never_recorded.map((n) => h('li', {}, n))),
      h('p', {}, r.privacy_mode === 'team_only'
        ? `Your managers and HR see figures of groups of at least ${r.k} people only, never yours alone.`
        : 'Your managers and HR can see your own figures.'));
  }

  function accessSection(access) {
    return h('section', {},
      h('h2', {}, 'Who looked at my data'),
      h('p', {}, 'Every question answered over data that included yours, from the audit trail, newest first.'),
      table('Questions that included your data', [
        { key: 'at', label: 'When', value: (e) => when(e.at_ms) },
        { key: 'role', label: 'Role', value: (e) => e.role },
        { key: 'action', label: 'What', value: (e) => e.action.replace(/^query\./, '') },
        { key: 'outcome', label: 'Outcome', value: (e) => e.outcome },
        { key: 'identities', label: 'Saw your name', value: (e) => (e.groups_only ? 'no (groups only)' : e.with_identities ? 'yes' : 'no') },
      ], access.entries, 'access'));
  }

  // ---- Team ----------------------------------------------------------------------

  const groupsOnly = () => me.privacy_mode === 'team_only' && (me.role === 'manager' || me.role === 'hr');

  async function team(range) {
    const grouped = groupsOnly();
    const by = 'department,' + range.period;
    const dayColumn = periodColumn(range);
    const activity = await kpi('activity', by, range);
    const attendance = await kpi('attendance', by, range);
    // Top apps are listed on department-day rows (in team_only, only there).
    const apps = await kpi('apps', 'department,day', range);
    const gps = await kpi('gps', by, range);
    const department = { key: 'department', label: 'Department', value: (r) => r.department };
    const columns = activityColumns(department);
    columns.splice(1, 0, dayColumn);
    const out = h('div', {},
      h('h1', {}, 'Team'),
      h('p', {}, me.role === 'manager' ? `Departments you manage: ${me.manages.join(', ') || 'none'}.` : 'The whole organisation.'),
      grouped ? h('p', { class: 'note', 'data-testid': 'groups-only' }, `This organisation shows managers and HR figures of groups of at least ${me.k} people only. ${activity.suppressed || 0} rows are hidden because their group is smaller.`) : null,
      rangeForm('team', range),
      h('h2', {}, 'Activity by department'),
      activityChart(`Active and idle hours per ${range.period}`, activity.rows, dayColumn.value),
      table(`Activity by department and ${range.period}`, columns, activity.rows, 'team-activity'),
      csvButton('activity', columns, activity.rows));
    if (!grouped) {
      const people = await kpi('activity', 'employee', range);
      const who = {
        key: 'employee',
        label: me.role === 'analyst' ? 'Pseudonym' : 'Employee',
        value: (r) => r.employee || r.subject,
        format: (v, r) => (r.employee ? h('a', { href: '#/team/person/' + encodeURIComponent(r.employee) + '?from=' + range.from + '&to=' + range.to }, v) : v),
      };
      const personColumns = activityColumns(who);
      out.append(h('h2', {}, 'People'), table('Activity per person', personColumns, people.rows, 'team-people'), csvButton('people', personColumns, people.rows));
    }
    const attendanceColumns = [department, dayColumn,
      { key: 'present_days', label: 'Present', num: true, value: (r) => r.present_days },
      { key: 'late_days', label: 'Late', num: true, value: (r) => r.late_days },
      { key: 'absent_days', label: 'Absent', num: true, value: (r) => r.absent_days }];
    out.append(h('h2', {}, 'Attendance'), table('Attendance by department and day', attendanceColumns, attendance.rows, 'team-attendance'), csvButton('attendance', attendanceColumns, attendance.rows));
    out.append(h('h2', {}, 'Apps'), appsSection('App time', apps.rows, 'team-apps'));
    if (gps.rows.length) {
      const gpsColumns = [department, dayColumn,
        { key: 'distance_km', label: 'Distance (km)', num: true, value: (r) => r.distance_km, format: (v) => v.toFixed(1) },
        { key: 'stops', label: 'Stops', num: true, value: (r) => r.stops },
        { key: 'on_site_s', label: 'On sites (h)', num: true, value: (r) => r.on_site_s, format: hours }];
      out.append(h('h2', {}, 'Field work'), table('Field work by department and day', gpsColumns, gps.rows, 'team-gps'), csvButton('field-work', gpsColumns, gps.rows));
    }
    return out;
  }

  async function person(employee, range) {
    if (groupsOnly() || me.role === 'analyst') return notAvailable();
    const dayColumn = periodColumn(range);
    const activity = await kpi('activity', 'employee,' + range.period, range);
    const rows = activity.rows.filter((r) => r.employee === employee);
    return h('div', {},
      h('h1', {}, employee),
      h('p', {}, h('a', { href: '#/team?from=' + range.from + '&to=' + range.to }, 'Back to the team')),
      activityChart(`Active and idle hours of ${employee} per ${range.period}`, rows, dayColumn.value),
      table(`Activity of ${employee} per ${range.period}`, activityColumns(dayColumn), rows, 'person-activity'));
  }

  // ---- Admin ----------------------------------------------------------------------

  async function admin() {
    const [tenant, tokens] = await Promise.all([api('/v1/admin/tenant'), api('/v1/admin/tokens')]);
    const doc = tenant.document;
    const out = h('div', {},
      h('h1', {}, 'Admin'),
      h('p', {}, `Organisation ${doc.id}, plan ${doc.plan}, time zone ${doc.time_zone}.`),
      settingsForm(tenant), tokensSection(tokens.tokens), devicesSection());
    if (me.role === 'owner') out.append(await auditSection());
    else out.append(h('h2', {}, 'Audit trail'), h('p', {}, 'The audit trail is for owners.'));
    return out;
  }

  function settingsForm(tenant) {
    const doc = tenant.document;
    const mode = h('select', { name: 'privacy_mode' },
      h('option', { value: 'per_person', selected: doc.privacy_mode !== 'team_only' }, 'per person'),
      h('option', { value: 'team_only', selected: doc.privacy_mode === 'team_only' }, 'team only (groups of at least k)'));
    const k = h('input', { type: 'number', name: 'extract_k', min: 2, max: 1000, value: doc.extract_k || 5 });
    const retention = h('input', { type: 'number', name: 'retention_days', min: 1, max: 3650, value: doc.retention_days || '', placeholder: 'plan default' });
    const status = h('p', { role: 'status' });
    return h('section', {},
      h('h2', {}, 'Settings'),
      h('form', {
        class: 'inline',
        onsubmit: async (e) => {
          e.preventDefault();
          const next = Object.assign({}, doc, { privacy_mode: mode.value, extract_k: Number(k.value) });
          if (retention.value) next.retention_days = Number(retention.value);
          else delete next.retention_days;
          try {
            const saved = await api('/v1/admin/tenant', json('PUT', next, { headers: { 'if-match': String(tenant.version) } }));
            tenant.version = saved.version;
            Object.assign(doc, saved.document);
            me = await api('/v1/session');
            status.textContent = 'Saved (version ' + saved.version + ').';
          } catch (err) {
            status.textContent = 'Not saved: ' + err.message;
          }
        },
      }, h('label', {}, 'Privacy mode', mode), h('label', {}, 'Smallest group (k)', k), h('label', {}, 'Retention (days)', retention), h('button', { type: 'submit' }, 'Save')),
      status,
      h('p', {}, 'Work hours: ' + (doc.work_hours ? `${doc.work_hours.start}–${doc.work_hours.end}, days ${doc.work_hours.days.join(', ')}` : 'default') + '.'),
      h('p', {}, 'App categories: productive ' + ((doc.app_categories && doc.app_categories.productive) || []).join(', ') +
        '; unproductive ' + ((doc.app_categories && doc.app_categories.unproductive) || []).join(', ') + '; anything else neutral.'),
      h('p', {}, 'Work hours and app categories change with PUT /v1/admin/tenant or candor tenant update.'));
  }

  function tokensSection(tokens) {
    const now = Date.now();
    const state = (t) => (t.revoked_at_ms ? 'revoked' : t.expires_at_ms && t.expires_at_ms <= now ? 'expired' : t.used_at_ms ? 'used' : 'live');
    return h('section', {}, h('h2', {}, 'Tokens and sessions'), table('Tokens and sessions', [
      { key: 'name', label: 'Name', value: (t) => t.name },
      { key: 'role', label: 'Role', value: (t) => t.role },
      { key: 'employee', label: 'Employee', value: (t) => t.employee || '' },
      { key: 'kind', label: 'Kind', value: (t) => (t.kind || 'api').replace(/_/g, ' ') },
      { key: 'created', label: 'Created', value: (t) => when(t.created_at_ms) },
      { key: 'state', label: 'State', value: state },
      {
        key: 'action', label: 'Action', value: (t) => t.id,
        format: (id, t) => (state(t) === 'live' && t.id !== me.token ? h('button', {
          type: 'button', class: 'secondary', 'aria-label': 'Revoke ' + t.name + ' (' + t.role + ')',
          onclick: async () => { await api('/v1/admin/tokens/' + encodeURIComponent(id), { method: 'DELETE' }); render(); },
        }, 'Revoke') : ''),
      },
    ], tokens, 'tokens'));
  }

  function devicesSection() {
    const device = h('input', { name: 'device', required: true });
    const status = h('p', { role: 'status' });
    return h('section', {}, h('h2', {}, 'Devices'),
      h('form', {
        class: 'inline',
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            await api('/v1/admin/devices/' + encodeURIComponent(device.value) + '/revoke', { method: 'POST' });
            status.textContent = 'Device ' + device.value + ' revoked.';
          } catch (err) {
            status.textContent = err.message;
          }
        },
      }, h('label', {}, 'Device id', device), h('button', { type: 'submit' }, 'Revoke device')), status);
  }

  // RFC 4180 CSV, as /v1/audit.csv writes it.
  function parseCsv(text) {
    const rows = [];
    let row = [];
    let field = '';
    let quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false; else field += c;
      } else if (c === '"') quoted = true;
      else if (c === ',') { row.push(field); field = ''; } else if (c === '\n') { row.push(field); rows.push(row); row = []; field = ''; } else if (c !== '\r') field += c;
    }
    if (field || row.length) { row.push(field); rows.push(row); }
    const [head, ...body] = rows;
    return body.map((r) => Object.fromEntries(head.map((k, i) => [k, r[i]])));
  }

  async function auditSection() {
    const { body, headers } = await api('/v1/audit.csv', { withHeaders: true });
    const entries = parseCsv(body);
    const verified = headers.get('candor-audit-verified');
    const problem = headers.get('candor-audit-problem');
    const detail = (e) => { try { return JSON.parse(e.detail); } catch (_) { return {}; } };
    const recent = entries.slice(-100).reverse();
    const history = entries.filter((e) => /^lake\.(retention|purge|erasure)/.test(e.action)).reverse();
    const extracts = entries.filter((e) => e.action === 'extract.produce').reverse();
    const entryColumns = [
      { key: 'seq', label: '#', num: true, value: (e) => Number(e.seq) },
      { key: 'at', label: 'When', value: (e) => e.at.replace('T', ' ').slice(0, 16) },
      { key: 'role', label: 'Role', value: (e) => e.role },
      { key: 'action', label: 'Action', value: (e) => e.action },
      { key: 'target', label: 'Target', value: (e) => e.target },
    ];
    return h('section', {},
      h('h2', {}, 'Audit trail'),
      h('p', { class: problem ? 'error' : 'note', 'data-testid': 'audit-status' }, problem ? `The chain does not verify: ${problem}` : `The chain verifies: ${verified} entries, none edited, reordered or missing.`),
      table('Latest entries', entryColumns, recent, 'audit'),
      h('h3', {}, 'Retention and erasure'),
      table('Deletions', entryColumns, history, 'deletions'),
      h('h3', {}, 'Extracts'),
      table('Extracts produced', [
        { key: 'at', label: 'When', value: (e) => e.at.replace('T', ' ').slice(0, 16) },
        { key: 'range', label: 'Days', value: (e) => { const d = detail(e); return `${d.from} – ${d.to} (${d.period})`; } },
        { key: 'groups', label: 'Groups', num: true, value: (e) => detail(e).groups },
        { key: 'sha256', label: 'SHA-256', value: (e) => detail(e).sha256 || '' },
      ], extracts, 'extracts'));
  }

  // ---- Start -------------------------------------------------------------------------

  async function start() {
    // A one-time sign-in link carries its token in the fragment, which never
    // reaches a server log; it is taken out of the address at once.
    const link = location.hash.match(/^#sign-in=([A-Za-z0-9.\-_]+)$/);
    if (link) {
      history.replaceState(null, '', location.pathname + '#/');
      try {
        await signIn(link[1]);
        return;
      } catch (e) {
        main.replaceChildren(signInView());
        main.querySelector('[role="alert"]').textContent = 'The sign-in link did not work: ' + e.message;
        return;
      }
    }
    try {
      me = await api('/v1/session');
    } catch (_) {
      me = null;
    }
    render();
  }

  window.addEventListener('hashchange', render);
  start();
})();
