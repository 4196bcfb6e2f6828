// The API client: every /api request, with the token, and how an answer and its errors read.
//
// Tokens: the user pastes their API token once; it lives in the session object (created by
// `createSession`, owned by the entry module) and in sessionStorage (this tab only, gone when the
// tab closes), never in a cookie, so no other site can make the browser send it (no CSRF). Every
// /api request carries it in `Authorization: Bearer`; since EventSource, <img src> and
// <a download> cannot send headers, streams are read with fetch (stream.js) and images and
// downloads are fetched and handed over as object URLs (files.js).

import { el } from './dom.js';

// Where the token is kept: sessionStorage survives a reload, not the tab.
const TOKEN_KEY = 'trainq.token';

function storedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

/** Keeps the token for this tab (or forgets it, for null). */
export function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives until a reload */ }
}

// Who is asking: the token kept in this tab, and `user`, GET /api/me's answer once the token has
// been checked ({name, admin, disk_bytes, ...}). account.js is the only place that changes it.
export function createSession() {
  return { token: storedToken(), user: null };
}

/** The header that carries a token, or none without one. */
export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Whether the signed-in user may read a job's private parts: their own, or any for an admin.
// Unknown (token not yet checked) counts as yes; the server's 404 has the last word.
export function mayOpen(session, job) {
  if (!session.token) return false;
  if (!session.user) return true;
  return session.user.admin || job?.owner === session.user.name;
}

/** An answer as the views read it: `{ok, status, body}`, the body parsed when it is JSON. */
export async function readAnswer(response) {
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json().catch(() => null) : await response.text();
  return { ok: response.ok, status: response.status, body };
}

// Error bodies are {"error", "detail"}; detail is {field, message} for bad input and e.g.
// {state} for conflicts, so every key of it is shown as a labelled line.
export function errorNodes(answer) {
  const body = answer.body;
  if (body && typeof body === 'object' && 'error' in body) {
    const detail = body.detail && typeof body.detail === 'object' ? body.detail : {};
    return [el('strong', {}, `${answer.status} — ${body.error}`),
      ...Object.entries(detail).map(([key, value]) => el('div', { class: `detail-${key}` },
        `${key[0].toUpperCase()}${key.slice(1)}: `,
        el(key === 'field' ? 'code' : 'span', {}, typeof value === 'string' ? value : JSON.stringify(value))))];
  }
  const text = typeof body === 'string' ? body.slice(0, 500) : '';
  return [el('strong', {}, `HTTP ${answer.status}`), text && el('div', {}, text)];
}

// The client of one session. `onTokenRefused(answer)` is called when the server answers 401 to a
// request that carried the current token: it no longer knows it, so the page signs out and asks
// for it again.
export function createApiClient(session, onTokenRefused) {
  // fetch with the token, never from the HTTP cache unless the caller asks.
  async function authFetch(path, options = {}) {
    const token = session.token;
    const response = await fetch(path, {
      cache: 'no-store', ...options, headers: { ...authHeaders(token), ...options.headers },
    });
    if (response.status === 401 && token && token === session.token) onTokenRefused(await readAnswer(response.clone()));
    return response;
  }

  // Any request, its answer read (a failed status is an answer too, not an exception).
  async function request(path, options = {}) {
    return readAnswer(await authFetch(path, options));
  }

  // A GET whose failure is an exception: for data the page cannot do without.
  async function getJson(path, options = {}) {
    const answer = await request(path, options);
    if (!answer.ok) throw new Error(`GET ${path}: HTTP ${answer.status}`);
    return answer.body;
  }

  return { authFetch, request, getJson };
}
