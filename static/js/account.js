// The account in the top bar and the sign-in form: checking a pasted token (GET /api/me), signing
// out, and what a change of caller does to the rest of the page. The only module that changes
// `state.session` (token and user; api.js keeps the token in sessionStorage).

import { $, setConnection, showResult } from './dom.js';
import { bytesText } from './format.js';
import { authHeaders, errorNodes, mayOpen, readAnswer, storeToken } from './api.js';

// The disk the user's job folders hold, and the quota when there is one (GET /api/me).
function diskText(user) {
  if (!Number.isFinite(user.disk_bytes)) return '';
  const quota = Number.isFinite(user.disk_quota_bytes) ? ` of ${bytesText(user.disk_quota_bytes)}` : '';
  return ` · disk ${bytesText(user.disk_bytes)}${quota}`;
}

// Hours with at most one decimal (`19.6`, `24`), as the waiting reasons say them.
function hoursText(hours) {
  return String(Math.round(hours * 10) / 10);
}

// The device-hour budget of this period (GET /api/me's `budget`): used, held by running jobs'
// time limits, and left. Nothing for admins or without a budget (the server sends none then).
function budgetText(user) {
  const budget = user.budget;
  if (!budget) return '';
  const unit = `${budget.class.toUpperCase()}-h`;
  return ` · budget ${hoursText(budget.used_hours)} used, ${hoursText(budget.held_hours)} held, `
    + `${hoursText(budget.left_hours)} left of ${hoursText(budget.budget_hours)} ${unit}`;
}

// The account's view over `app` ({state, client, views}).
export function createAccountView(app) {
  const { state: { session, detail }, client, views } = app;

  // The top bar's account line and what signing in enables: who is signed in, their disk, submit.
  function renderAccount() {
    const signedIn = Boolean(session.token);
    document.body.classList.toggle('signed-in', signedIn);
    $('signin').hidden = signedIn;
    $('account').hidden = !signedIn;
    $('whoami').textContent = session.user
      ? `signed in as ${session.user.name}${session.user.admin ? ' (admin)' : ''}${diskText(session.user)}${budgetText(session.user)}`
      : 'signed in (checking the token…)';
    $('submit-button').disabled = !signedIn;
    views.users.renderForCaller();
  }

  // Brings the sign-in form into view with the cursor in it (the job page's "Sign in" button too).
  function focusSignIn() {
    $('signin').scrollIntoView({ behavior: 'smooth', block: 'start' });
    $('token-input').focus();
  }

  // Everything the page shows depends on who asks: the queue starts again from a fresh snapshot,
  // the open job is opened again, and a comparison of the previous user's jobs goes away.
  function setToken(token, user) {
    session.token = token;
    session.user = user;
    storeToken(token);
    renderAccount();
    views.compare.close();
    views.queue.restartForCaller();
    views.jobPage.onHashChange(true).catch(setConnection);
  }

  // The token is checked with GET /api/me before it is kept, so a typo is told at once.
  async function signIn(event) {
    event.preventDefault();
    const input = $('token-input');
    const out = $('signin-result');
    const button = $('signin-button');
    const token = input.value.trim();
    if (!token) {
      showResult(out, 'error', 'Paste your token first.');
      return;
    }
    button.disabled = true;
    showResult(out, '', 'Checking the token…');
    try {
      const answer = await readAnswer(await fetch('/api/me', { cache: 'no-store', headers: authHeaders(token) }));
      if (!answer.ok) {
        showResult(out, 'error', answer.status === 401
          ? 'The server does not know this token. Copy it again from the output of `trainq user add`, or ask the admin for a new one.'
          : errorNodes(answer));
        return;
      }
      input.value = '';
      showResult(out, '', []);
      setToken(token, answer.body);
    } catch (err) {
      showResult(out, 'error', `Could not reach the server: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // Signing out forgets the token in this tab; the server keeps it valid for the next sign-in.
  function signOut() {
    showResult($('signin-result'), '', []);
    setToken(null, null);
  }

  // The server answered 401 to the current token: revoked, or replaced by a new one.
  function tokenRefused(answer) {
    setToken(null, null);
    showResult($('signin-result'), 'error', ['The server refused your token; sign in again. ', ...errorNodes(answer)]);
    focusSignIn();
  }

  // A token kept from earlier in this tab is used at once and checked when the server answers
  // (a 401 signs out through `authFetch`).
  async function checkToken() {
    const token = session.token;
    const answer = await client.request('/api/me');
    if (!answer.ok || token !== session.token) return;
    session.user = answer.body;
    renderAccount();
    views.queue.renderLists();
    if (detail.job && detail.access === 'open' && !mayOpen(session, detail.job)) views.jobPage.lockDetail('foreign');
  }

  // The sign-in form and the sign-out button, and the top bar drawn for the token kept in this tab.
  function start() {
    $('signin-form').addEventListener('submit', signIn);
    $('signout-button').addEventListener('click', signOut);
    renderAccount();
  }

  // A new token for the same user (the settings' "New token"): kept for this tab, nothing else
  // changes, since the caller is the same.
  function replaceToken(token) {
    session.token = token;
    storeToken(token);
  }

  // A job started or ended: a budgeted user's used and held hours moved, so the top bar reads
  // them again (coalesced with the lists' refresh; nothing is asked of users without a budget).
  async function refreshBudget() {
    if (!session.user?.budget) return;
    const token = session.token;
    const answer = await client.request('/api/me');
    if (!answer.ok || token !== session.token) return;
    session.user = answer.body;
    renderAccount();
  }

  return { start, focusSignIn, tokenRefused, checkToken, replaceToken, refreshBudget };
}
