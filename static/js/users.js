// The caller's settings (where their job notifications go, a new token) and, for admins, the
// accounts page: every account with its role, state, jobs, device-hours, disk and last request,
// disable / enable / new token per account, and a roster import as a file upload (sent as it is,
// `text/csv`: the server reads it with the same reader as the CLI). Every /api call goes through
// `app.client`; a token shown here is shown once and never kept except as the tab's own token.

import { $, el, showResult } from './dom.js';
import { bytesText } from './format.js';
import { errorNodes } from './api.js';

// "3 min ago", "2 h ago", or "never" for a Unix time (seconds).
function agoText(seconds) {
  if (!Number.isFinite(seconds)) return 'never';
  const minutes = Math.max(0, (Date.now() / 1000 - seconds) / 60);
  if (minutes < 2) return 'just now';
  if (minutes < 120) return `${Math.round(minutes)} min ago`;
  if (minutes < 2880) return `${Math.round(minutes / 60)} h ago`;
  return `${Math.round(minutes / 1440)} days ago`;
}

// The settings and accounts views over `app` ({state, client, views}).
export function createUsersView(app) {
  const { state: { session }, client, views } = app;

  // A token shown once, with what to do with it.
  function tokenNodes(name, token) {
    return [el('strong', {}, `New token for ${name} (shown once; the old one no longer works): `), el('code', { class: 'token' }, token)];
  }

  // Settings: the email / webhook form filled from GET /api/me, and "New token".
  function renderSettings() {
    const user = session.user;
    $('settings').hidden = !session.token;
    if (!user) return;
    $('settings-email').value = user.email ?? '';
    $('settings-webhook-url').value = user.webhook?.url ?? '';
  }

  async function saveTargets(event) {
    event.preventDefault();
    const out = $('settings-result');
    const email = $('settings-email').value.trim();
    const url = $('settings-webhook-url').value.trim();
    const secret = $('settings-webhook-secret').value;
    const body = { email: email || null };
    if (!url) body.webhook = null;
    else if (secret) body.webhook = { url, secret };
    else if (url !== (session.user?.webhook?.url ?? '')) {
      showResult(out, 'error', 'A new webhook needs its secret (16+ characters, e.g. from `openssl rand -hex 32`).');
      return;
    }
    const answer = await client.request('/api/me', {
      method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    if (!answer.ok) {
      showResult(out, 'error', errorNodes(answer));
      return;
    }
    $('settings-webhook-secret').value = '';
    session.user = { ...session.user, ...answer.body };
    showResult(out, 'ok', 'Saved.');
  }

  // A new token for the caller: the tab switches to it at once (the old one stops working).
  async function rotateOwn() {
    const out = $('settings-result');
    if (!window.confirm('Make a new token? The one you use now (here and in `trainq`) stops working at once.')) return;
    const answer = await client.request('/api/me/token', { method: 'POST' });
    if (!answer.ok) {
      showResult(out, 'error', errorNodes(answer));
      return;
    }
    views.account.replaceToken(answer.body.token);
    showResult(out, 'ok', [...tokenNodes(answer.body.name, answer.body.token),
      el('div', {}, 'This tab uses it already. In your terminal: `trainq login URL` and paste it.')]);
  }

  // The accounts table (admins).
  function accountRow(account) {
    const action = (label, handler) => el('button', { type: 'button', class: 'secondary', onclick: handler }, label);
    const change = (disabled) => () => patch(account.name, { disabled });
    return el('tr', { dataset: { name: account.name } },
      el('td', {}, account.name),
      el('td', {}, account.full_name ?? ''),
      el('td', {}, account.email ?? '—'),
      el('td', {}, account.role),
      el('td', { class: `state-${account.state}` }, account.state),
      el('td', { class: 'num' }, String(account.jobs)),
      el('td', { class: 'num' }, account.device_hours.toFixed(1)),
      el('td', { class: 'num' }, bytesText(account.disk_bytes)),
      el('td', {}, agoText(account.last_request_at)),
      el('td', {},
        account.state === 'enabled' ? action('Disable', change(true)) : action('Enable', change(false)),
        action('New token', () => rotate(account.name))));
  }

  async function loadAccounts() {
    if (!session.user?.admin) return;
    const answer = await client.request('/api/admin/users');
    if (!answer.ok) {
      showResult($('users-result'), 'error', errorNodes(answer));
      return;
    }
    $('users-table').querySelector('tbody').replaceChildren(...answer.body.users.map(accountRow));
  }

  async function patch(name, change) {
    const answer = await client.request(`/api/admin/users/${encodeURIComponent(name)}`, {
      method: 'PATCH', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(change),
    });
    showResult($('users-result'), answer.ok ? 'ok' : 'error',
      answer.ok ? `${name} is ${answer.body.state}.` : errorNodes(answer));
    await loadAccounts();
  }

  async function rotate(name) {
    if (!window.confirm(`Make a new token for ${name}? Their current one stops working at once.`)) return;
    const answer = await client.request(`/api/admin/users/${encodeURIComponent(name)}/token`, { method: 'POST' });
    showResult($('users-result'), answer.ok ? 'ok' : 'error',
      answer.ok ? tokenNodes(name, answer.body.token) : errorNodes(answer));
  }

  // The roster upload: the file as it is; the tokens not mailed are shown once, in a table.
  async function importRoster(event) {
    event.preventDefault();
    const out = $('users-result');
    const file = $('roster-file').files[0];
    if (!file) {
      showResult(out, 'error', 'Choose the roster (a CSV file with a header row name,email,admin) first.');
      return;
    }
    const sendTokens = $('roster-send-tokens').checked;
    const answer = await client.request(`/api/admin/users?send_tokens=${sendTokens}`, {
      method: 'POST', headers: { 'Content-Type': 'text/csv' }, body: await file.arrayBuffer(),
    });
    if (!answer.ok) {
      showResult(out, 'error', errorNodes(answer));
      return;
    }
    const tokens = answer.body.created.filter((account) => account.token);
    const table = tokens.length === 0 ? null : el('table', { class: 'data' },
      el('thead', {}, el('tr', {}, el('th', {}, 'name'), el('th', {}, 'email'), el('th', {}, 'token (shown once)'))),
      el('tbody', {}, tokens.map((account) => el('tr', {},
        el('td', {}, account.name), el('td', {}, account.email ?? ''), el('td', {}, el('code', {}, account.token))))));
    showResult(out, 'ok', [el('div', {}, answer.body.message), table]);
    $('roster-file').value = '';
    await loadAccounts();
  }

  // Called whenever the caller changes: settings for everyone signed in, accounts for admins.
  function renderForCaller() {
    renderSettings();
    const admin = Boolean(session.user?.admin);
    $('users').hidden = !admin;
    if (admin) loadAccounts().catch((err) => showResult($('users-result'), 'error', err.message));
  }

  function start() {
    $('settings-form').addEventListener('submit', saveTargets);
    $('settings-rotate').addEventListener('click', rotateOwn);
    $('roster-form').addEventListener('submit', importRoster);
    $('users-refresh').addEventListener('click', () => loadAccounts());
    renderForCaller();
  }

  return { start, renderForCaller };
}
