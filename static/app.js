// trainq dashboard: devices, the queue, one job's detail, a comparison and a submit form. Live
// through server-sent events (/api/events for the queue, /api/jobs/{id}/events for the open job),
// which start with a snapshot and resume with Last-Event-ID after a dropped connection. Plain DOM,
// no framework, nothing from a CDN; every piece of data goes in through textContent.
//
// Tokens: the user pastes their API token once; it lives in a variable and in sessionStorage (this
// tab only, gone when the tab closes), never in a cookie, so no other site can make the browser
// send it (no CSRF). Every /api request carries it in `Authorization: Bearer`; since EventSource,
// <img src> and <a download> cannot send headers, streams are read with fetch and images and
// downloads are fetched and handed over as object URLs.
'use strict';

const LOG_LINES = 60;
const LOG_KEEP = 400;
const DEVICE_POLL_MS = 5000;
// A safety net only: events carry every change, this catches anything a proxy swallowed.
const RESYNC_MS = 30000;
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
// Reconnecting a dropped stream waits this long, doubling after each failure up to the maximum.
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;
// A downloaded file's object URL is kept this long: the browser reads it after the click returns.
const DOWNLOAD_KEEP_MS = 60000;
// Where the token is kept: sessionStorage survives a reload, not the tab.
const TOKEN_KEY = 'trainq.token';
const CANCELLABLE = new Set(['queued', 'running']);
// Same as deploy/examples/q1-demo.json: the assignment's Q1, shrunk for the demo dataset.
const EXAMPLE_SPEC = {
  name: 'q1-demo', dataset: 'chest_xray_demo', backbone: 'vgg16', weights: 'random',
  image_size: 32, batch_size: 10,
  head: ['gap', { dense: 512 }, { batchnorm: { momentum: 0.9 } }, 'relu', { dense: 128 }, { dense: 1 }],
  phases: [
    { epochs: 8, train: 'head' },
    { epochs: 4, train: ['block5', 'head'], optimizer: { name: 'rmsprop', lr: 0.00001 } },
  ],
  optimizer: { name: 'rmsprop', lr: 0.0001 },
  seed: 1,
};
const COLORS = { train: '#2563eb', val: '#ea580c' };
const METRIC_NAMES = {
  test_acc: 'Test acc', test_loss: 'Test loss', precision: 'Precision', recall: 'Recall',
  specificity: 'Specificity', f1: 'F1', auc: 'AUC', train_acc: 'Train acc', train_loss: 'Train loss',
};
const CAM_KINDS = [
  ['tp', 'True positives'], ['tn', 'True negatives'], ['fp', 'False positives'], ['fn', 'False negatives'],
];
// Only files the worker writes into cam/ are shown; anything else in the index is ignored.
const CAM_FILE = /^cam\/[A-Za-z0-9_][A-Za-z0-9._-]*$/;

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// The one way nodes are built: strings become text nodes, so user input can never become markup.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'style') Object.assign(node.style, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) node.append(child);
  }
  return node;
}

// ---------- formatting ----------

const shortId = (id) => String(id).slice(0, 8);
const gib = (bytes) => (bytes / 2 ** 30).toFixed(1);
const fixed = (x, digits) => (Number.isFinite(x) ? x.toFixed(digits) : '—');
const percent = (x) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '—');
const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');

function bytesText(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

// The server's estimate for a queued job: rough by nature, so rounded to minutes (or hours).
function roughDuration(seconds) {
  if (!Number.isFinite(seconds)) return null;
  const minutes = Math.max(1, Math.round(seconds / 60));
  return minutes < 120 ? `~${minutes} min` : `~${Math.round(minutes / 60)} h`;
}

function durationText(seconds) {
  if (!Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

// Accuracies read best as percentages, losses with four decimals, the rest with three.
function metricText(name, value) {
  if (name.endsWith('_acc')) return percent(value);
  if (name.endsWith('_loss')) return fixed(value, 4);
  return fixed(value, 3);
}

const jobHref = (id) => `#job=${enc(id)}`;
const jobLink = (id, text) => el('a', { href: jobHref(id) }, text);
const badge = (state) => el('span', { class: `badge state-${state}` }, state);

// ---------- API ----------

// ---------- token ----------

function storedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives until a reload */ }
}

// `user` is GET /api/me's answer once the token has been checked ({name, admin}).
const auth = { token: storedToken(), user: null };

function authHeaders(token = auth.token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Whether the signed-in user may read a job's private parts: their own, or any for an admin.
// Unknown (token not yet checked) counts as yes; the server's 404 has the last word.
function mayOpen(job) {
  if (!auth.token) return false;
  if (!auth.user) return true;
  return auth.user.admin || job?.owner === auth.user.name;
}

// ---------- API ----------

// fetch with the token. A 401 to a request that carried the current token means the server no
// longer knows it: the page signs out and asks for it again.
async function authFetch(path, options = {}) {
  const token = auth.token;
  const response = await fetch(path, {
    cache: 'no-store', ...options, headers: { ...authHeaders(token), ...options.headers },
  });
  if (response.status === 401 && token && token === auth.token) tokenRefused(await readAnswer(response.clone()));
  return response;
}

async function readAnswer(response) {
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json().catch(() => null) : await response.text();
  return { ok: response.ok, status: response.status, body };
}

async function api(path, options = {}) {
  return readAnswer(await authFetch(path, options));
}

async function getJson(path, options = {}) {
  const answer = await api(path, options);
  if (!answer.ok) throw new Error(`GET ${path}: HTTP ${answer.status}`);
  return answer.body;
}

// Error bodies are {"error", "detail"}; detail is {field, message} for bad input and e.g.
// {state} for conflicts, so every key of it is shown as a labelled line.
function errorNodes(answer) {
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

function showResult(target, kind, nodes) {
  target.className = `result ${kind}`;
  target.replaceChildren(...[nodes].flat().filter((n) => n != null && n !== false));
}

function setConnection(error) {
  const status = $('connection');
  status.classList.toggle('offline', Boolean(error));
  status.textContent = error ? `offline — ${error.message ?? error}` : `live · ${new Date().toLocaleTimeString()}`;
}

// ---------- images and downloads behind the token ----------

// Object URLs of the images each part of the page shows ('report-plots', 'cam-gallery',
// 'compare-plots'): drawing a part again revokes its old ones, so a page left open for a whole
// course does not pile up blobs.
const objectUrls = new Map();

function releaseObjectUrls(part) {
  for (const url of objectUrls.get(part) ?? []) URL.revokeObjectURL(url);
  objectUrls.delete(part);
}

// An <img> whose bytes come from an /api URL fetched with the token; a link around it opens the
// same bytes full size once loaded. A failure calls `onFailure(answer, img)` (answer null: the
// server is unreachable) so the caller can show the server's reason instead of a broken image.
function tokenImage(part, url, props, onFailure) {
  const img = el('img', props);
  (async () => {
    const response = await authFetch(url);
    if (!response.ok) {
      onFailure(await readAnswer(response), img);
      return;
    }
    const blob = await response.blob();
    if (!img.isConnected) return; // drawn over while loading
    const objectUrl = URL.createObjectURL(blob);
    if (!objectUrls.has(part)) objectUrls.set(part, new Set());
    objectUrls.get(part).add(objectUrl);
    img.src = objectUrl;
    const link = img.closest('a');
    if (link) link.href = objectUrl;
  })().catch(() => onFailure(null, img));
  return img;
}

// The file name the server suggests in Content-Disposition.
function dispositionName(response) {
  const match = /filename="([^"]+)"/.exec(response.headers.get('content-disposition') || '');
  return match ? match[1] : null;
}

// Makes a link to an /api file work with the token: a plain click could not send the header, so
// the click fetches the file and saves it through a temporary object-URL link. The href stays the
// real API URL (what curl would fetch); a failure is shown right after the link.
function bindDownload(link, fileName = '') {
  link.addEventListener('click', (event) => {
    event.preventDefault();
    download(link, fileName).catch((err) => downloadFailed(link, `download failed: ${err.message}`));
  });
  return link;
}

const downloadLink = (url, text, fileName = '') => bindDownload(el('a', { href: url }, text), fileName);

async function download(link, fileName) {
  if (link.nextElementSibling?.classList.contains('download-error')) link.nextElementSibling.remove();
  const response = await authFetch(link.getAttribute('href'));
  if (!response.ok) {
    const answer = await readAnswer(response);
    downloadFailed(link, `${answer.status} — ${answer.body?.detail?.message ?? answer.body?.error ?? 'download failed'}`);
    return;
  }
  const objectUrl = URL.createObjectURL(await response.blob());
  const save = el('a', { href: objectUrl, download: dispositionName(response) || fileName, hidden: true });
  document.body.append(save);
  save.click();
  save.remove();
  setTimeout(() => URL.revokeObjectURL(objectUrl), DOWNLOAD_KEEP_MS);
}

// Opens the HW report (GET /api/report, behind the token) as a page in a new tab: the tab is
// opened during the click, so no popup blocker stops it, and shows the HTML through an object URL.
// Without a tab (blocked anyway) the page is saved as a file instead.
async function openReport(link) {
  if (link.nextElementSibling?.classList.contains('download-error')) link.nextElementSibling.remove();
  const tab = window.open('', '_blank');
  const response = await authFetch(link.getAttribute('href'));
  if (!response.ok) {
    tab?.close();
    const answer = await readAnswer(response);
    downloadFailed(link, `${answer.status} — ${answer.body?.detail?.message ?? answer.body?.error ?? 'report failed'}`);
    return;
  }
  const objectUrl = URL.createObjectURL(new Blob([await response.blob()], { type: 'text/html' }));
  if (tab) {
    tab.location.href = objectUrl;
  } else {
    const save = el('a', { href: objectUrl, download: dispositionName(response) || 'trainq-report.html', hidden: true });
    document.body.append(save);
    save.click();
    save.remove();
  }
  setTimeout(() => URL.revokeObjectURL(objectUrl), DOWNLOAD_KEEP_MS);
}

function downloadFailed(link, text) {
  link.after(el('span', { class: 'download-error', role: 'alert' }, ` ${text}`));
}

// ---------- server-sent events over fetch ----------

// Reads a text/event-stream as EventSource does (`event:`, `data:` and `id:` lines; a blank line
// ends a message; `:` lines are keep-alives) but with the token in a header, which EventSource
// cannot send. After a dropped connection it reconnects with Last-Event-ID, so the server replays
// what was missed or starts again from a snapshot; it waits RETRY_MIN_MS first, doubling (with a
// little jitter, so a restarted server is not hit by every tab at once) up to RETRY_MAX_MS while
// failures go on. `handlers` maps event names to functions of the parsed data. A 401, 403 or 404
// stops the stream (asking again would get the same answer) and goes to `onRefused(answer)`.
function openStream(path, { handlers, onOpen = () => {}, onError = () => {}, onRefused = () => {} }) {
  const controller = new AbortController();
  let closed = false;
  let lastEventId = null;
  let delay = RETRY_MIN_MS;
  let message = { event: '', data: [], id: null };

  function dispatch() {
    const { event, data, id } = message;
    message = { event: '', data: [], id: null };
    if (id !== null) lastEventId = id;
    const handler = handlers[event || 'message'];
    if (closed || !data.length || !handler) return;
    // Like an EventSource listener, a failing handler is reported and the stream goes on.
    try { handler(JSON.parse(data.join('\n'))); } catch (err) { setTimeout(() => { throw err; }); }
  }

  function onLine(line) {
    if (line === '') { dispatch(); return; }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') message.event = value;
    else if (field === 'data') message.data.push(value);
    else if (field === 'id' && !value.includes('\0')) message.id = value;
  }

  async function readOnce() {
    const headers = { Accept: 'text/event-stream' };
    if (lastEventId !== null) headers['Last-Event-ID'] = lastEventId;
    const response = await authFetch(path, { headers, signal: controller.signal });
    if ([401, 403, 404].includes(response.status)) {
      closed = true;
      onRefused(await readAnswer(response));
      return;
    }
    if (response.status === 429) delay = Math.max(delay, Number(response.headers.get('retry-after')) * 1000 || 0);
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    onOpen();
    delay = RETRY_MIN_MS;
    message = { event: '', data: [], id: null };
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error('the server closed the stream');
      buffer += decoder.decode(value, { stream: true });
      // A line ends at \n, \r\n or \r; a \r that ends the buffer may be the first half of \r\n.
      for (let end = /\r\n|\n|\r(?!$)/.exec(buffer); end; end = /\r\n|\n|\r(?!$)/.exec(buffer)) {
        const line = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        onLine(line);
      }
    }
  }

  (async () => {
    while (!closed) {
      try {
        await readOnce();
      } catch (err) {
        if (!closed) onError(err);
      }
      if (closed) return;
      await new Promise((resolve) => { setTimeout(resolve, delay * (0.8 + Math.random() * 0.4)); });
      delay = Math.min(RETRY_MAX_MS, delay * 2);
    }
  })();
  return { close() { closed = true; controller.abort(); } };
}

// ---------- progress ----------

// Epochs per phase: a list row carries them (`epochs_per_phase`), a full job has its spec; the
// progress snapshot only knows the current phase's.
function phaseEpochs(job) {
  if (Array.isArray(job.epochs_per_phase)) return job.epochs_per_phase.map((epochs) => Number(epochs) || 0);
  const phases = Array.isArray(job.spec?.phases) ? job.spec.phases : [];
  return phases.map((phase) => Number(phase?.epochs) || 0);
}

// Overall fraction across phases, as the server's `Job::fraction_done`; computed here because
// live progress events carry the worker's position only.
function jobFraction(job) {
  if (job.state === 'succeeded') return 1;
  const p = job.progress;
  if (!p) return null;
  const epochs = phaseEpochs(job);
  const count = Math.max(epochs.length, p.phases || 0);
  const epochsOf = (i) => epochs[i] || p.epochs || 0;
  let total = 0;
  for (let i = 0; i < count; i += 1) total += epochsOf(i);
  let done = 0;
  for (let i = 0; i < (p.phase || 1) - 1; i += 1) done += epochsOf(i);
  done += Math.max(0, (p.epoch || 1) - 1) + (p.steps ? p.step / p.steps : 0);
  return total > 0 ? Math.min(1, Math.max(0, done / total)) : null;
}

// Seconds of training left at the current speed: the steps left in every remaining epoch times
// the batch size over images/s (evaluation time not included).
function etaSeconds(job) {
  const p = job.progress;
  const batch = Number(job.batch_size ?? job.spec?.batch_size) || 0;
  if (job.state !== 'running' || !p || !p.steps || !(p.images_per_sec > 0) || !batch || !p.phase) return null;
  const epochs = phaseEpochs(job);
  let laterEpochs = Math.max(0, (epochs[p.phase - 1] || p.epochs) - p.epoch);
  for (let i = p.phase; i < epochs.length; i += 1) laterEpochs += epochs[i];
  const steps = (p.steps - p.step) + laterEpochs * p.steps;
  return (steps * batch) / p.images_per_sec;
}

function progressBar(fraction) {
  const pct = (fraction * 100).toFixed(1);
  return el('div', {
    class: 'progress-bar', role: 'progressbar', title: `${pct}%`,
    'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': pct,
  }, el('div', { class: 'progress-fill', style: { width: `${pct}%` } }));
}

function progressText(p) {
  if (!p) return null;
  const text = `phase ${p.phase}/${p.phases} · epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.steps}`;
  return el('div', { class: 'progress-text' }, text, p.activity && el('span', { class: 'muted' }, ` · ${p.activity}`));
}

// A meter is a progress bar for resources; its own class keeps `.progress-bar` meaning jobs only.
const meter = (fraction) => el('div', { class: 'meter' },
  el('div', { class: 'meter-fill', style: { width: `${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%` } }));

// ---------- devices and the job lists ----------

// Rows a list asks for at a time (the server's default page; it allows up to MAX_PAGE).
const PAGE = 50;
const MAX_PAGE = 500;
// The lists the page shows, each a GET /api/jobs query: the active queue in queue order (`more`
// appends its next page), the signed-in student's newest jobs (likewise), and every job, newest
// first, a page at a time (older/newer). The page never holds more than what these show.
const LISTS = {
  active: { table: 'active-jobs', query: 'state=queued,running&order=asc', more: 'active-more', empty: 'Nothing is queued or running.' },
  mine: { table: 'my-jobs', query: 'owner=me', more: 'my-more', empty: 'You have no jobs yet — submit one below.', signedIn: true },
  all: { table: 'all-jobs', query: '', empty: 'No jobs yet — submit one below.' },
};
// The lists' columns, a title and a class each; the first (the compare boxes) is titled for
// screen readers only.
const COLUMNS = [
  [null, null], ['Name', null], ['ID', null], ['Owner', null], ['State', null], ['Device', null], ['Progress', 'col-progress'],
  ['Images/s', 'num'], ['ETA', 'num'], ['Queue', 'num'], ['Test acc', 'num'],
];

// `rows` keeps each shown job once by id, so a progress event updates it in every list that shows
// it. `progressAt` remembers when a job's progress last came by event, so a page fetched before
// that moment cannot put an older progress back. Per list: the ids shown, the cursor of the page
// after them, and for `all` the cursor its page starts at and those of the pages before it.
const queue = {
  rows: new Map(), devices: [], selected: new Set(), progressAt: new Map(), stream: null, painted: false,
  lists: Object.fromEntries(Object.keys(LISTS).map((name) => [name, { ids: [], next: null, at: null, before: [], generation: 0 }])),
};

const listShown = (name) => !LISTS[name].signedIn || Boolean(auth.token);

function renderDevices() {
  const cards = queue.devices.map((device) => {
    const job = device.job ? queue.rows.get(device.job) : null;
    const memory = device.memory_total != null && [
      el('div', { class: 'meter-label' }, `Memory ${gib(device.memory_used ?? 0)} / ${gib(device.memory_total)} GiB`),
      meter((device.memory_used ?? 0) / device.memory_total),
    ];
    const utilisation = device.utilization_percent != null && [
      el('div', { class: 'meter-label' }, `Utilisation ${device.utilization_percent}%`),
      meter(device.utilization_percent / 100),
    ];
    return el('article', { class: `device-card ${device.job ? 'busy' : 'idle'}`, dataset: { deviceId: device.id } },
      el('div', { class: 'device-head' },
        el('span', { class: 'device-id' }, device.id),
        el('span', { class: 'badge kind' }, device.kind)),
      el('div', { class: 'device-name' }, device.name),
      memory, utilisation,
      el('div', { class: 'device-job' }, device.job
        ? ['Running ', jobLink(device.job, job?.name ?? shortId(device.job))]
        : el('span', { class: 'muted' }, 'idle')));
  });
  $('devices').replaceChildren(...(cards.length ? cards : [el('p', { class: 'muted' }, 'No devices reported.')]));
}

function compareBox(job) {
  return el('input', {
    type: 'checkbox', class: 'compare-pick', 'aria-label': `Compare ${job.name}`,
    checked: queue.selected.has(job.id),
    onclick: (event) => event.stopPropagation(),
    onchange: (event) => {
      if (event.target.checked) queue.selected.add(job.id); else queue.selected.delete(job.id);
      // The same job may be shown in another list too: its box there follows.
      for (const box of document.querySelectorAll(`tr[data-job-id="${CSS.escape(job.id)}"] .compare-pick`)) box.checked = event.target.checked;
      updateCompareButton();
    },
  });
}

const ownerText = (job) => [job.owner ?? '—', auth.user && job.owner === auth.user.name && el('span', { class: 'muted' }, ' (you)')];

// A running job's ETA is computed here from its progress; a queued one's is the server's estimate
// of when it starts (`eta_at`, Unix seconds).
function etaText(job) {
  if (job.state === 'queued') {
    const estimate = job.eta_at != null ? roughDuration(Math.max(0, job.eta_at - Date.now() / 1000)) : null;
    return estimate ? el('span', { title: 'estimated wait before it starts' }, estimate) : '—';
  }
  return durationText(etaSeconds(job));
}

// A queued job's place, and why it waits when the server says (`pending_reason`).
function queuePlace(job) {
  if (job.state !== 'queued') return '—';
  return [job.position != null ? `#${job.position}` : '—',
    job.pending_reason && el('div', { class: 'pending-reason' }, String(job.pending_reason))];
}

function jobRow(job) {
  const fraction = jobFraction(job);
  return el('tr', {
    dataset: { jobId: job.id, state: job.state },
    class: job.id === detail.id ? 'selected' : null,
    tabindex: '0',
    onclick: () => { location.hash = jobHref(job.id); },
    onkeydown: (event) => { if (event.key === 'Enter') location.hash = jobHref(job.id); },
  },
  el('td', {}, mayOpen(job) && compareBox(job)),
  el('td', { class: 'name' }, jobLink(job.id, job.name)),
  el('td', { class: 'mono', title: job.id }, shortId(job.id)),
  el('td', { class: 'owner' }, ownerText(job)),
  el('td', {}, badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && el('span', { class: 'muted' }, ' cancelling')),
  el('td', {}, job.device ?? '—'),
  el('td', { class: 'col-progress' }, fraction != null && progressBar(fraction), progressText(job.progress)),
  el('td', { class: 'num' }, fixed(job.progress?.images_per_sec, 1)),
  el('td', { class: 'num eta' }, etaText(job)),
  el('td', { class: 'num queue-place' }, queuePlace(job)),
  el('td', { class: 'num' }, percent(job.test_metrics?.test_acc ?? job.final_metrics?.test_acc)));
}

function renderLists() {
  for (const [name, spec] of Object.entries(LISTS)) {
    const list = queue.lists[name];
    const section = $(spec.table).closest('section');
    section.hidden = !listShown(name);
    if (section.hidden) continue;
    const rows = list.ids.map((id) => queue.rows.get(id)).filter(Boolean).map(jobRow);
    const empty = el('tr', {}, el('td', { colspan: String(COLUMNS.length), class: 'muted' }, spec.empty));
    $(spec.table).tBodies[0].replaceChildren(...(rows.length ? rows : [empty]));
    if (spec.more) $(spec.more).hidden = !list.next;
  }
  const all = queue.lists.all;
  $('all-newer').disabled = all.at == null;
  $('all-older').disabled = !all.next;
  $('all-page').textContent = `page ${all.before.length + 1}`;
  updateCompareButton();
  // When the first rows reached the screen, for anyone (or any test) timing the first paint.
  if (!queue.painted && document.querySelector('tr[data-job-id]')) {
    queue.painted = true;
    performance.mark('trainq:first-rows');
  }
}

// Takes in rows fetched at `fetchedAt`, keeping a running job's progress that came by event later.
function takeRows(jobs, fetchedAt) {
  for (const job of jobs) {
    const known = queue.rows.get(job.id);
    const newer = known && job.state === 'running' && (queue.progressAt.get(job.id) ?? -Infinity) > fetchedAt;
    queue.rows.set(job.id, newer ? { ...job, progress: known.progress } : job);
  }
}

// Drops rows no list shows any more, and picks of jobs that left the page.
function forgetHidden() {
  const shown = new Set(Object.keys(LISTS).filter(listShown).flatMap((name) => queue.lists[name].ids));
  for (const id of [...queue.rows.keys()]) if (!shown.has(id)) queue.rows.delete(id);
  for (const id of [...queue.selected]) if (!shown.has(id)) queue.selected.delete(id);
}

function afterListChange() {
  forgetHidden();
  renderLists();
  renderDevices();
  syncLockedDetail();
}

function listPath(name, cursor, limit) {
  const query = [LISTS[name].query, `limit=${limit}`, cursor && `cursor=${enc(cursor)}`].filter(Boolean).join('&');
  return `/api/jobs?${query}`;
}

// The browser keeps the last answer and asks with its ETag (`no-cache`): an unchanged list costs
// a 304, not the rows again.
const getPage = (path) => getJson(path, { cache: 'no-cache' });

// Loads a list again where the reader is: from the start as many rows as it shows (at least a
// page), or for `all` the page it is on.
async function loadList(name) {
  const list = queue.lists[name];
  const generation = ++list.generation;
  const fetchedAt = performance.now();
  let jobs = [];
  let next = null;
  if (name === 'all') {
    const page = await getPage(listPath(name, list.at, PAGE));
    ({ jobs, next_cursor: next } = page);
  } else {
    const wanted = Math.max(PAGE, list.ids.length);
    let cursor = null;
    do {
      const page = await getPage(listPath(name, cursor, Math.min(MAX_PAGE, wanted - jobs.length)));
      jobs.push(...page.jobs);
      next = page.next_cursor;
      cursor = next;
    } while (next && jobs.length < wanted);
  }
  if (generation !== list.generation) return;
  takeRows(jobs, fetchedAt);
  Object.assign(list, { ids: jobs.map((job) => job.id), next });
}

async function refreshLists() {
  const names = Object.keys(LISTS).filter(listShown);
  await Promise.all(names.map(loadList));
  afterListChange();
}

// `more` below the active queue and the student's jobs: the next page, appended.
async function loadMore(name) {
  const list = queue.lists[name];
  if (!list.next) return;
  const generation = ++list.generation;
  const fetchedAt = performance.now();
  const page = await getPage(listPath(name, list.next, PAGE));
  if (generation !== list.generation) return;
  takeRows(page.jobs, fetchedAt);
  Object.assign(list, { ids: [...list.ids, ...page.jobs.map((job) => job.id)], next: page.next_cursor });
  afterListChange();
}

// Older/newer through every job: the cursors of the pages before are kept to come back.
async function turnPage(older) {
  const all = queue.lists.all;
  if (older) {
    if (!all.next) return;
    all.before.push(all.at);
    all.at = all.next;
  } else {
    if (all.at == null) return;
    all.at = all.before.pop() ?? null;
  }
  await loadList('all');
  afterListChange();
}

async function refreshDevices() {
  queue.devices = await getJson('/api/devices');
  renderDevices();
}

// State changes (queued, started, finished) move other jobs too (queue positions, devices), so
// they reload the lists, coalesced; progress events patch one row in place.
let refreshTimer = 0;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    Promise.all([refreshLists(), refreshDevices()]).catch(setConnection);
  }, 150);
}

// The queue's stream is public; with a token it also carries the caller's own jobs' private
// events and results, so a change of token starts it again from a fresh snapshot. Its snapshot
// holds the first pages of the active queue and of the caller's jobs (`pages.active`,
// `pages.mine`), what the page opens with.
function connectQueue() {
  queue.stream?.close();
  queue.stream = openStream(`/api/events?limit=${PAGE}`, {
    onOpen: () => {
      setConnection(null);
      if (auth.token && !auth.user) checkToken().catch(() => {});
    },
    onError: () => setConnection(new Error('reconnecting…')),
    handlers: {
      snapshot: (snapshot) => {
        const fetchedAt = performance.now();
        for (const [name, page] of Object.entries(snapshot.pages ?? {})) {
          const list = queue.lists[name];
          if (!list) continue;
          list.generation += 1;
          takeRows(page.jobs, fetchedAt);
          Object.assign(list, { ids: page.jobs.map((job) => job.id), next: page.next_cursor });
        }
        afterListChange();
        setConnection(null);
      },
      queued: scheduleRefresh,
      started: scheduleRefresh,
      cancel_requested: scheduleRefresh,
      finished: scheduleRefresh,
      deleted: scheduleRefresh,
      // Only rows on the page matter; a job off the page shows up when its state changes.
      progress: (event) => {
        const job = queue.rows.get(event.job_id);
        if (!job) return;
        job.progress = event.progress;
        queue.progressAt.set(job.id, performance.now());
        renderLists();
        syncLockedDetail();
      },
    },
  });
}

// ---------- job detail ----------

// `access`: 'open' (the job's own stream feeds it), 'signed-out' or 'foreign' (only the queue's
// public facts); `generation` tells a stale answer from the current one after a reopen.
const detail = {
  id: null, job: null, epochs: [], logLines: [], logOffset: 0, stream: null, outputsKey: null, classes: null,
  access: null, generation: 0,
};

function hashJobId() {
  const match = /^#job=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function fact(term, ...value) {
  return [el('dt', {}, term), el('dd', {}, ...value)];
}

function renderDetailJob() {
  const job = detail.job;
  if (!job) return;
  $('detail-message').hidden = true;
  $('detail-body').hidden = false;
  $('detail-title').replaceChildren('Job ', el('span', { class: 'job-name' }, job.name));
  const fraction = jobFraction(job);
  $('detail-summary').replaceChildren(
    ...fact('ID', el('span', { class: 'mono' }, job.id)),
    ...fact('Owner', ownerText(job)),
    ...fact('State', badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && ' (cancel requested)'),
    ...(job.state === 'queued' && job.position != null ? fact('Queue position', `#${job.position}`) : []),
    ...(job.state === 'queued' && job.pending_reason ? fact('Waiting for', String(job.pending_reason)) : []),
    ...fact('Device', job.device ?? '—'),
    ...(job.progress?.precision ? fact('Precision', job.progress.precision) : []),
    ...fact('Progress', fraction != null && progressBar(fraction), job.progress ? progressText(job.progress) : '—'),
    ...fact('Images/s', fixed(job.progress?.images_per_sec, 1)),
    ...fact('ETA', etaText(job)),
    ...(job.parent_id ? fact('Parent', el('span', { class: 'parent' }, jobLink(job.parent_id, shortId(job.parent_id)))) : []),
    ...(job.params ? fact('Sweep values', paramsText(job.params)) : []),
    ...(job.notes?.length ? fact('Notes', ...job.notes.map((note) => el('div', { class: 'note' }, note))) : []),
    ...(job.group_id ? fact('Group', el('span', { class: 'mono' }, job.group_id)) : []),
    ...fact('Attempts', String(job.attempts ?? '—')),
    ...fact('Submitted', when(job.submitted_at)),
    ...fact('Started', when(job.started_at)),
    ...fact('Finished', when(job.finished_at)),
    ...(job.disk_bytes ? fact('Disk', bytesText(job.disk_bytes)) : []),
    ...(job.deleted_at ? fact('Deleted', `${when(job.deleted_at * 1000)} by ${job.deleted_by ?? '?'}: its files are gone`) : []));
  $('cancel-button').hidden = !(CANCELLABLE.has(job.state) && detail.access === 'open');
  $('delete-button').hidden = !(TERMINAL.has(job.state) && !job.deleted_at && detail.access === 'open');
  $('detail-error-box').hidden = !job.error;
  $('detail-error').textContent = job.error ?? '';
  $('job-spec').textContent = JSON.stringify(job.spec, null, 2);
  $('metrics-csv').href = `/api/jobs/${enc(job.id)}/metrics?format=csv`;
}

// Epoch events may repeat what a snapshot already had: they are keyed by phase and epoch.
function upsertEpoch(epoch) {
  const at = detail.epochs.findIndex((e) => e.phase === epoch.phase && e.epoch === epoch.epoch);
  if (at >= 0) detail.epochs[at] = epoch; else detail.epochs.push(epoch);
  detail.epochs.sort((a, b) => a.phase - b.phase || a.epoch - b.epoch);
}

function renderEpochs() {
  drawCharts();
  const rows = detail.epochs.map((e) => el('tr', {},
    el('td', { class: 'num' }, String(e.phase)), el('td', { class: 'num' }, String(e.epoch)),
    el('td', { class: 'num' }, fixed(e.train_loss, 4)), el('td', { class: 'num' }, percent(e.train_acc)),
    el('td', { class: 'num' }, fixed(e.val_loss, 4)), el('td', { class: 'num' }, percent(e.val_acc)),
    el('td', { class: 'num' }, fixed(e.seconds, 1))));
  const empty = el('tr', {}, el('td', { colspan: '7', class: 'muted' }, 'No finished epochs yet.'));
  $('metrics-table').tBodies[0].replaceChildren(...(rows.length ? rows : [empty]));
}

function renderLogLines() {
  const pre = $('job-log');
  // Follow the tail only if the reader has not scrolled up to read something.
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
  const lines = detail.logLines.slice(-LOG_LINES);
  pre.textContent = lines.length ? lines.join('\n') : '(empty)';
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

function renderFinal(final, classes) {
  if (!final) {
    $('final-metrics').replaceChildren(el('dd', { class: 'muted' }, 'Not available until the job succeeds.'));
    $('confusion-table').replaceChildren();
    return;
  }
  const binary = final.binary;
  const undefinedReason = (name) => binary?.undefined?.[name];
  const binaryFacts = binary ? ['precision', 'recall', 'specificity', 'f1', 'auc'].flatMap((name) => fact(
    METRIC_NAMES[name], binary[name] == null
      ? el('span', { class: 'muted', title: undefinedReason(name) ?? '' }, `undefined — ${undefinedReason(name) ?? ''}`)
      : metricText(name, binary[name]))) : [];
  $('final-metrics').replaceChildren(
    ...fact('Test acc', percent(final.test_acc)), ...fact('Test loss', fixed(final.test_loss, 4)),
    ...binaryFacts,
    ...fact('Train acc', percent(final.train_acc)), ...fact('Train loss', fixed(final.train_loss, 4)));
  const matrix = binary?.confusion ?? final.multiclass?.confusion;
  if (!matrix) { $('confusion-table').replaceChildren(); return; }
  const names = matrix.map((_, i) => classes?.[i] ?? `class ${i}`);
  $('confusion-table').replaceChildren(el('table', { class: 'data confusion' },
    el('caption', {}, 'Confusion matrix (rows: true class, columns: predicted)'),
    el('thead', {}, el('tr', {}, el('th', {}, 'true \\ predicted'), ...names.map((n) => el('th', { class: 'num' }, n)))),
    el('tbody', {}, ...matrix.map((row, i) => el('tr', {}, el('th', {}, names[i]),
      ...row.map((count, j) => el('td', { class: i === j ? 'num diagonal' : 'num' }, String(count))))))));
}

function renderArtifacts(artifacts) {
  // Only same-origin API paths become links, so a stray value can never be a script URL.
  const items = artifacts.map((a) => el('li', {},
    String(a.url).startsWith('/api/') ? downloadLink(a.url, a.name, a.name.split('/').pop()) : a.name,
    el('span', { class: 'muted' }, ` ${bytesText(a.bytes)}`)));
  $('artifacts').replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'None yet.')]));
}

// A figure of a server-rendered plot in a part of the page: the SVG shown (a click opens it full
// size), PNG and SVG offered for the report. A plot the server cannot draw yet shows the server's
// reason instead of a broken image.
function plotFigure(part, base, kind, title, query, version) {
  const url = (format) => `${base}/${kind}.${format}${query}${query ? '&' : '?'}v=${enc(version)}`;
  const figure = el('figure', { class: 'plot' });
  const img = tokenImage(part, url('svg'), { class: 'plot-img', alt: title, dataset: { plot: kind } }, (answer) => {
    figure.replaceChildren(el('figcaption', {}, title),
      el('div', { class: 'result error' }, answer ? errorNodes(answer) : 'Could not load the plot.'));
  });
  figure.append(el('a', { target: '_blank', rel: 'noopener', title: `${title}, full size` }, img),
    el('figcaption', {}, title, ' · ', downloadLink(url('png'), 'PNG'), ' · ', downloadLink(url('svg'), 'SVG')));
  return figure;
}

function renderReportPlots(job, final) {
  const target = $('report-plots');
  releaseObjectUrls('report-plots');
  if (!TERMINAL.has(job.state)) {
    target.replaceChildren(el('p', { class: 'muted' }, 'Drawn when the job has finished; the live charts above grow with every epoch.'));
    return;
  }
  if (!detail.epochs.length) {
    target.replaceChildren(el('p', { class: 'muted' }, 'The job finished no epoch, so there is nothing to plot.'));
    return;
  }
  const base = `/api/jobs/${enc(job.id)}/plots`;
  const version = `${job.state}-${detail.epochs.length}`;
  const figure = (kind, title) => plotFigure('report-plots', base, kind, title, '', version);
  const figures = [figure('accuracy', 'Accuracy'), figure('loss', 'Loss')];
  if (final?.binary?.roc?.length) figures.push(figure('roc', 'ROC'));
  if (final?.binary || final?.multiclass) figures.push(figure('confusion', 'Confusion matrix'));
  target.replaceChildren(...figures);
}

async function renderCams(id) {
  const target = $('cam-gallery');
  const answer = await api(`/api/jobs/${enc(id)}/artifacts/cam/index.json`);
  if (id !== detail.id) return;
  releaseObjectUrls('cam-gallery');
  if (answer.status === 404) {
    target.replaceChildren(el('p', { class: 'muted cam-empty' }, 'No heatmaps yet.'));
    return;
  }
  if (!answer.ok || !Array.isArray(answer.body)) {
    target.replaceChildren(el('p', { class: 'result error' }, 'The heatmap index (cam/index.json) could not be read.'));
    return;
  }
  const entries = answer.body.filter((entry) => entry && CAM_FILE.test(String(entry.file)));
  const image = (entry, title) => tokenImage('cam-gallery', `/api/jobs/${enc(id)}/artifacts/${entry.file}`,
    { alt: `${title}: ${entry.path ?? entry.file}` },
    (failure, img) => img.replaceWith(el('span', { class: 'result error' }, `${entry.file} could not be loaded`)));
  const groups = CAM_KINDS.map(([kind, title]) => {
    const items = entries.filter((entry) => entry.kind === kind);
    if (!items.length) return null;
    return el('div', { class: 'cam-group', dataset: { kind } }, el('h4', {}, `${title} (${items.length})`),
      el('div', { class: 'cam-row' }, ...items.map((entry) => el('figure', { class: 'cam' },
        el('a', { target: '_blank', rel: 'noopener' }, image(entry, title)),
        el('figcaption', {}, `${entry.label ?? ''} · p=${fixed(Number(entry.probability), 2)}`,
          el('div', { class: 'muted small' }, String(entry.path ?? '')))))));
  }).filter(Boolean);
  target.replaceChildren(...(groups.length ? groups : [el('p', { class: 'muted cam-empty' }, 'No heatmaps yet.')]));
}

// The class names of a job's dataset, for the confusion table's labels.
async function datasetClasses(job) {
  const datasets = await getJson('/api/datasets').catch(() => []);
  return datasets.find((d) => d.name === job.spec?.dataset)?.classes ?? null;
}

// Outputs (test metrics, plots, heatmaps, artifacts) change only with the job's state or its
// epochs, so they are fetched again only when one of those changed.
async function loadOutputs() {
  const job = detail.job;
  if (!job) return;
  const key = `${job.id}:${job.state}:${detail.epochs.length}`;
  if (detail.outputsKey === key) return;
  detail.outputsKey = key;
  const group = renderGroup(job);
  const base = `/api/jobs/${enc(job.id)}`;
  const [metrics, artifacts] = await Promise.all([api(`${base}/metrics`), api(`${base}/artifacts`)]);
  if (job.id !== detail.id) return;
  if (detail.classes == null) detail.classes = await datasetClasses(job);
  const final = metrics.ok ? metrics.body.final : null;
  renderFinal(final, detail.classes);
  if (artifacts.ok) renderArtifacts(artifacts.body);
  renderReportPlots(job, final);
  await renderCams(job.id);
  await group;
}

// A sweep's values as a student reads them: `/image_size = 256, /optimizer/lr = 0.0001`.
function paramsText(params) {
  return Object.entries(params).map(([pointer, value]) => `${pointer} = ${JSON.stringify(value)}`).join(', ');
}

// The metrics any row of a table has, in the order a report lists them.
function presentMetrics(rows) {
  return Object.keys(METRIC_NAMES).filter((name) => rows.some((row) => row.metrics[name]));
}

// The job's group, one row per sweep combination (a repeat group: one row), mean ± std over its
// runs, the swept values as columns; the open job's combination is marked.
async function renderGroup(job) {
  const box = $('group-box');
  box.hidden = !job.group_id;
  if (!job.group_id) return;
  const answer = await api(`/api/groups/${enc(job.group_id)}`);
  if (job.id !== detail.id || !answer.ok) return;
  const group = answer.body;
  const metrics = presentMetrics(group.combinations);
  $('group-summary').textContent = `(${group.succeeded}/${group.jobs.length} runs succeeded${group.finished ? '' : ', running'})`;
  $('group-table').tHead.replaceChildren(el('tr', {},
    ...group.varying.map((pointer) => el('th', {}, pointer)), el('th', { class: 'num' }, 'Runs'),
    ...metrics.map((name) => el('th', { class: 'num' }, METRIC_NAMES[name]))));
  $('group-table').tBodies[0].replaceChildren(...group.combinations.map((row) => el('tr',
    { class: row.jobs.includes(job.id) ? 'selected' : null },
    ...group.varying.map((pointer) => el('td', { class: 'mono' }, JSON.stringify(row.params[pointer]))),
    el('td', { class: 'num' }, `${row.succeeded}/${row.jobs.length}`),
    ...metrics.map((name) => el('td', { class: 'num' }, cellText(name, row.metrics[name]))))));
}

async function refreshDetailJob() {
  const id = detail.id;
  if (!id) return;
  const answer = await api(`/api/jobs/${enc(id)}`);
  if (id !== detail.id || !answer.ok) return;
  detail.job = answer.body;
  renderDetailJob();
  await loadOutputs();
}

function clearDetail() {
  Object.assign(detail, { job: null, epochs: [], logLines: [], logOffset: 0, outputsKey: null, classes: null, access: null });
  releaseObjectUrls('report-plots');
  releaseObjectUrls('cam-gallery');
  $('detail-private').hidden = false;
  $('detail-locked').hidden = true;
  $('detail-title').textContent = 'Job';
  for (const id of ['detail-summary', 'final-metrics', 'artifacts', 'detail-error', 'job-log', 'job-spec',
    'confusion-table', 'report-plots', 'cam-gallery']) {
    $(id).replaceChildren();
  }
  $('metrics-table').tBodies[0].replaceChildren();
  showResult($('cancel-result'), '', []);
  for (const id of ['detail-error-box', 'cancel-button', 'delete-button', 'detail-message', 'group-box']) $(id).hidden = true;
  drawCharts();
}

// A job's private parts (metrics, plots, log, artifacts) need its owner's or an admin's token;
// its public facts (the summary, the spec) stay, and follow the queue's stream.
function lockDetail(access) {
  detail.access = access;
  detail.stream?.close();
  detail.stream = null;
  $('detail-private').hidden = true;
  $('cancel-button').hidden = true;
  $('delete-button').hidden = true;
  const owner = detail.job?.owner ?? 'someone else';
  showResult($('detail-locked'), 'notice', access === 'signed-out'
    ? ['Sign in to see this job’s metrics, plots, log and artifacts. ',
      el('button', { type: 'button', class: 'secondary', onclick: focusSignIn }, 'Sign in')]
    : `This job belongs to ${owner}: its metrics, plots, log and artifacts are visible to its owner and admins only.`);
  $('detail-locked').hidden = false;
  renderDetailJob();
}

function syncLockedDetail() {
  if (!detail.id || (detail.access !== 'signed-out' && detail.access !== 'foreign')) return;
  const row = queue.rows.get(detail.id);
  if (!row) return;
  // A row has no spec: what the page already has of the job stays, the row's newer facts win.
  detail.job = { ...detail.job, ...row };
  renderDetailJob();
}

function followJob(id) {
  detail.access = 'open';
  detail.stream = openStream(`/api/jobs/${enc(id)}/events`, {
    // A 404 is someone else's job (the server hides it as if absent); a 401 signs out on its own.
    onRefused: (answer) => { if (answer.status === 404 && id === detail.id) lockDetail('foreign'); },
    handlers: {
      snapshot: (snapshot) => {
        detail.job = snapshot.job;
        detail.epochs = snapshot.epochs;
        detail.logLines = snapshot.log.text.split('\n');
        if (detail.logLines[detail.logLines.length - 1] === '') detail.logLines.pop();
        detail.logOffset = snapshot.log.offset;
        renderDetailJob();
        renderEpochs();
        renderLogLines();
        loadOutputs().catch(setConnection);
      },
      progress: (event) => {
        if (!detail.job) return;
        detail.job.progress = event.progress;
        renderDetailJob();
      },
      epoch: (epoch) => {
        upsertEpoch(epoch);
        renderEpochs();
      },
      // A line whose offset is below what the snapshot read is already shown.
      log: (event) => {
        if (event.offset < detail.logOffset) return;
        detail.logOffset = event.offset + 1;
        detail.logLines.push(event.line);
        if (detail.logLines.length > LOG_KEEP) detail.logLines.splice(0, detail.logLines.length - LOG_KEEP);
        renderLogLines();
      },
      started: () => refreshDetailJob().catch(setConnection),
      cancel_requested: () => refreshDetailJob().catch(setConnection),
      finished: () => refreshDetailJob().catch(setConnection),
      deleted: () => refreshDetailJob().catch(setConnection),
    },
  });
}

// Opens the job the hash names; `reopen` opens it again even if it is already open (after the
// token changed, what the page may show of it changed too).
async function onHashChange(reopen = false) {
  const id = hashJobId();
  if (id === detail.id && !reopen) return;
  const generation = ++detail.generation;
  detail.stream?.close();
  detail.stream = null;
  detail.id = id;
  $('job-detail').hidden = !id;
  for (const row of document.querySelectorAll('tr[data-job-id]')) {
    row.classList.toggle('selected', row.dataset.jobId === id);
  }
  clearDetail();
  if (!id) return;
  if (!reopen) $('job-detail').scrollIntoView({ behavior: 'smooth', block: 'start' });
  const answer = await api(`/api/jobs/${enc(id)}`).catch(() => null);
  if (generation !== detail.generation) return;
  if (!answer?.ok) {
    $('detail-body').hidden = true;
    showResult($('detail-message'), 'error', answer?.status === 404 ? `No job with id ${id}.` : answer ? errorNodes(answer) : 'The server is unreachable.');
    $('detail-message').hidden = false;
    return;
  }
  detail.job = answer.body;
  if (!auth.token) lockDetail('signed-out');
  else if (!mayOpen(answer.body)) lockDetail('foreign');
  else {
    followJob(id);
    renderDetailJob();
  }
}

async function cancelJob() {
  const id = detail.id;
  const button = $('cancel-button');
  const out = $('cancel-result');
  button.disabled = true;
  showResult(out, '', 'Cancelling…');
  try {
    const answer = await api(`/api/jobs/${enc(id)}/cancel`, { method: 'POST' });
    if (id !== detail.id) return;
    if (answer.ok) showResult(out, 'ok', 'Cancellation requested.');
    else showResult(out, 'error', ['Cancel failed: ', ...errorNodes(answer)]);
  } catch (err) {
    showResult(out, 'error', `Cancel failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// Deleting removes a finished job's files (checkpoints, plots, log); its row stays, marked deleted.
async function deleteJob() {
  const id = detail.id;
  const job = detail.job;
  if (!job) return;
  const size = job.disk_bytes ? ` (${bytesText(job.disk_bytes)})` : '';
  if (!window.confirm(`Delete job “${job.name}”? Its checkpoints, plots and log${size} are removed for good; its row and metrics stay.`)) return;
  const button = $('delete-button');
  const out = $('cancel-result');
  button.disabled = true;
  showResult(out, '', 'Deleting…');
  try {
    const answer = await api(`/api/jobs/${enc(id)}`, { method: 'DELETE' });
    if (id !== detail.id) return;
    if (!answer.ok) {
      showResult(out, 'error', ['Delete failed: ', ...errorNodes(answer)]);
      return;
    }
    showResult(out, 'ok', `Deleted: ${bytesText(answer.body.freed_bytes ?? 0)} freed.`);
    detail.job = answer.body;
    renderDetailJob();
    checkToken().catch(setConnection);
    scheduleRefresh();
  } catch (err) {
    showResult(out, 'error', `Delete failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---------- compare ----------

function compareIds() {
  const ids = [...queue.selected];
  if (!$('compare-groups').checked) return ids;
  // A job of a repeat group stands for its whole group, once.
  return [...new Set(ids.map((id) => queue.rows.get(id)?.group_id ?? id))];
}

function updateCompareButton() {
  const button = $('compare-button');
  button.textContent = `Compare selected (${queue.selected.size})`;
  button.disabled = queue.selected.size === 0;
}

function cellText(name, cell) {
  if (!cell) return '—';
  const value = metricText(name, cell.mean);
  if (cell.std == null) return value;
  return `${value} ± ${metricText(name, cell.std)} (n=${cell.n})`;
}

async function showCompare() {
  const ids = compareIds();
  const query = `?ids=${enc(ids.join(','))}`;
  const section = $('compare');
  section.hidden = false;
  releaseObjectUrls('compare-plots');
  const answer = auth.token ? await api(`/api/compare${query}`) : null;
  const message = $('compare-message');
  message.hidden = Boolean(answer?.ok);
  if (!answer?.ok) {
    showResult(message, 'error', answer ? errorNodes(answer) : 'Sign in to compare your jobs.');
    $('compare-table').tHead.replaceChildren();
    $('compare-table').tBodies[0].replaceChildren();
    $('compare-plots').replaceChildren();
    return;
  }
  const { metrics, rows } = answer.body;
  // A sweep group is one row per combination: its swept values are columns.
  const pointers = [...new Set(rows.flatMap((row) => Object.keys(row.params ?? {})))].sort();
  $('compare-table').tHead.replaceChildren(el('tr', {},
    el('th', {}, 'Name'), ...pointers.map((pointer) => el('th', {}, pointer)), el('th', {}, 'ID'), el('th', {}, 'State'), el('th', { class: 'num' }, 'Runs'),
    ...metrics.map((name) => el('th', { class: 'num' }, METRIC_NAMES[name] ?? name))));
  $('compare-table').tBodies[0].replaceChildren(...rows.map((row) => el('tr', { dataset: { compareId: row.id } },
    el('td', {}, row.kind === 'job' ? jobLink(row.id, row.name) : `${row.name} (group)`),
    ...pointers.map((pointer) => el('td', { class: 'mono' }, row.params && pointer in row.params ? JSON.stringify(row.params[pointer]) : '—')),
    el('td', { class: 'mono', title: row.id }, shortId(row.id)),
    el('td', {}, row.kind === 'job' ? badge(row.state) : row.state),
    el('td', { class: 'num' }, `${row.succeeded}/${row.jobs.length}`),
    ...metrics.map((name) => el('td', { class: 'num' }, cellText(name, row.metrics[name]))))));
  $('compare-csv').href = `/api/compare${query}&format=csv`;
  $('compare-report').href = `/api/report${query}`;
  const version = rows.map((row) => `${row.state}${row.succeeded}`).join('');
  const figure = (kind, title) => plotFigure('compare-plots', '/api/compare/plots', kind, title, query, version);
  $('compare-plots').replaceChildren(figure('accuracy', 'Accuracy'), figure('loss', 'Loss'), figure('roc', 'ROC'));
  section.scrollIntoView({ behavior: 'smooth', block: 'start' });
}

// ---------- charts ----------

function drawCharts() {
  const epochs = detail.epochs;
  // Index i starts a new phase when its phase differs from the previous epoch's.
  const boundaries = epochs.flatMap((e, i) => (i > 0 && e.phase !== epochs[i - 1].phase ? [i] : []));
  const pair = (metric) => ['train', 'val'].map((split) => (
    { label: split, color: COLORS[split], values: epochs.map((e) => e[`${split}_${metric}`]) }));
  drawChart($('loss-chart'), 'Loss', pair('loss'), boundaries, (v, span) => v.toFixed(span < 0.1 ? 3 : 2));
  drawChart($('acc-chart'), 'Accuracy', pair('acc'), boundaries,
    (v, span) => `${(v * 100).toFixed(span < 0.05 ? 1 : 0)}%`);
}

function segment(ctx, x1, y1, x2, y2) {
  ctx.beginPath();
  ctx.moveTo(x1, y1);
  ctx.lineTo(x2, y2);
  ctx.stroke();
}

function drawChart(canvas, title, series, boundaries, tickText) {
  // How many epochs are drawn, for anyone (or any test) watching the chart grow.
  canvas.dataset.points = String(Math.max(0, ...series.map((s) => s.values.filter(Number.isFinite).length)));
  // Size the backing store to the CSS box times the pixel ratio so lines stay crisp.
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 320;
  const height = canvas.clientHeight || 220;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const css = getComputedStyle(document.documentElement);
  const ink = css.getPropertyValue('--muted').trim() || '#666';
  const grid = css.getPropertyValue('--border').trim() || '#ddd';
  ctx.font = '12px system-ui, sans-serif';
  Object.assign(ctx, { fillStyle: ink, textAlign: 'left', textBaseline: 'top' });
  ctx.fillText(title, 8, 6);

  const pad = { left: 52, right: 14, top: 30, bottom: 30 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const n = Math.max(0, ...series.map((s) => s.values.length));
  const values = series.flatMap((s) => s.values).filter(Number.isFinite);
  if (!values.length || plotW <= 0 || plotH <= 0) {
    ctx.textAlign = 'center';
    ctx.fillText('No epochs yet', width / 2, height / 2 - 6);
    return;
  }
  const [min, max] = [Math.min(...values), Math.max(...values)];
  const margin = max > min ? (max - min) * 0.08 : Math.max(Math.abs(max) * 0.1, 0.01);
  const [lo, hi] = [min - margin, max + margin];
  const x = (i) => pad.left + (n === 1 ? plotW / 2 : (i / (n - 1)) * plotW);
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * plotH;

  Object.assign(ctx, { strokeStyle: grid, lineWidth: 1, textAlign: 'right', textBaseline: 'middle' });
  for (let k = 0; k <= 4; k += 1) {
    const v = lo + ((hi - lo) * k) / 4;
    segment(ctx, pad.left, y(v), pad.left + plotW, y(v));
    ctx.fillText(tickText(v, hi - lo), pad.left - 6, y(v));
  }
  // Label every k-th epoch so numbers never overlap on a narrow screen.
  const every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(plotW / 28))));
  Object.assign(ctx, { textAlign: 'center', textBaseline: 'top' });
  for (let i = 0; i < n; i += every) ctx.fillText(String(i + 1), x(i), pad.top + plotH + 6);
  ctx.fillText('epoch', pad.left + plotW / 2, pad.top + plotH + 17);

  ctx.setLineDash([5, 4]);
  ctx.strokeStyle = ink;
  for (const b of boundaries) {
    const bx = (x(b - 1) + x(b)) / 2;
    segment(ctx, bx, pad.top, bx, pad.top + plotH);
  }
  ctx.setLineDash([]);

  for (const s of series) {
    Object.assign(ctx, { strokeStyle: s.color, fillStyle: s.color, lineWidth: 2 });
    ctx.beginPath();
    let penDown = false; // a null value (no validation that epoch) breaks the line
    s.values.forEach((v, i) => {
      if (!Number.isFinite(v)) { penDown = false; return; }
      if (penDown) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
      penDown = true;
    });
    ctx.stroke();
    s.values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      ctx.beginPath();
      ctx.arc(x(i), y(v), 2.5, 0, Math.PI * 2);
      ctx.fill();
    });
  }

  // Legend, top right: one swatch per series, then the phase-boundary marker when present.
  Object.assign(ctx, { textAlign: 'left', textBaseline: 'top' });
  const entries = series.map((s) => ({ label: s.label, color: s.color, dashed: false }));
  if (boundaries.length) entries.push({ label: 'phase', color: ink, dashed: true });
  let lx = width - pad.right;
  for (const entry of [...entries].reverse()) {
    lx -= ctx.measureText(entry.label).width + 26;
    Object.assign(ctx, { strokeStyle: entry.color, lineWidth: 2, fillStyle: ink });
    ctx.setLineDash(entry.dashed ? [4, 3] : []);
    segment(ctx, lx, 12, lx + 16, 12);
    ctx.setLineDash([]);
    ctx.fillText(entry.label, lx + 20, 6);
  }
}

// ---------- submit ----------

// The job the spec editor was cloned from ({ id, name, spec }), or null for a fresh spec.
const submitForm = { parent: null };

// RFC 7396: the merge patch that turns `from` into `to`. A removed key becomes null, objects are
// compared key by key, anything else (lists too) is replaced whole; unchanged keys are left out.
function mergePatch(from, to) {
  const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);
  if (!isObject(from) || !isObject(to)) return to;
  const patch = {};
  for (const key of Object.keys(from)) if (!Object.hasOwn(to, key)) patch[key] = null;
  for (const [key, value] of Object.entries(to)) {
    if (!Object.hasOwn(from, key)) patch[key] = value;
    else if (isObject(from[key]) && isObject(value)) {
      const inner = mergePatch(from[key], value);
      if (Object.keys(inner).length) patch[key] = inner;
    } else if (JSON.stringify(from[key]) !== JSON.stringify(value)) patch[key] = value;
  }
  return patch;
}

// "Clone & edit": the open job's spec in the editor, submitted as a resubmit of that job.
function cloneJob() {
  const job = detail.job;
  if (!job) return;
  submitForm.parent = { id: job.id, name: job.name, spec: job.spec };
  $('submit-spec').value = JSON.stringify(job.spec, null, 2);
  renderClone();
  $('submit').scrollIntoView({ behavior: 'smooth', block: 'start' });
}

function renderClone() {
  const parent = submitForm.parent;
  $('submit-clone').hidden = !parent;
  $('submit-button').textContent = parent ? 'Submit clone' : 'Submit job';
  if (!parent) return;
  const fresh = () => { submitForm.parent = null; renderClone(); };
  showResult($('submit-clone'), 'notice', ['Cloning ', jobLink(parent.id, parent.name),
    ': only your changes are sent, and the new job links back to it.',
    el('button', { type: 'button', class: 'secondary', onclick: fresh }, 'Submit as a new job instead')]);
}

// Where the editor's text goes: POST /api/jobs, or for a clone the changes as a merge patch.
function submitRequest(text) {
  const parent = submitForm.parent;
  if (!parent) return { path: '/api/jobs', body: text };
  const edited = JSON.parse(text);
  return { path: `/api/jobs/${enc(parent.id)}/resubmit`, body: JSON.stringify(mergePatch(parent.spec, edited)) };
}

async function submitSpec() {
  const out = $('submit-result');
  const button = $('submit-button');
  if (!auth.token) {
    showResult(out, 'error', 'Sign in first: jobs are submitted with your token.');
    return;
  }
  let request;
  try {
    request = submitRequest($('submit-spec').value);
  } catch (err) {
    showResult(out, 'error', `The spec is not valid JSON: ${err.message}`);
    return;
  }
  button.disabled = true;
  showResult(out, '', 'Submitting…');
  try {
    const answer = await api(request.path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: request.body,
    });
    // A submission always answers {group_id, jobs}: one job, or a group of them.
    const jobs = answer.status === 201 ? answer.body?.jobs ?? [] : [];
    if (jobs.length === 1) {
      showResult(out, 'ok', ['Queued job ', jobLink(jobs[0].id, jobs[0].id)]);
    } else if (jobs.length > 1) {
      showResult(out, 'ok', [`Queued a group of ${answer.body.jobs.length} runs: `,
        ...answer.body.jobs.flatMap((job, i) => [i ? ', ' : '', jobLink(job.id, shortId(job.id))])]);
    } else {
      showResult(out, 'error', errorNodes(answer));
    }
  } catch (err) {
    showResult(out, 'error', `Could not reach the server: ${err.message}`);
  } finally {
    button.disabled = !auth.token;
  }
}

// ---------- signing in ----------

function renderAccount() {
  const signedIn = Boolean(auth.token);
  document.body.classList.toggle('signed-in', signedIn);
  $('signin').hidden = signedIn;
  $('account').hidden = !signedIn;
  $('whoami').textContent = auth.user
    ? `signed in as ${auth.user.name}${auth.user.admin ? ' (admin)' : ''}${diskText(auth.user)}`
    : 'signed in (checking the token…)';
  $('submit-button').disabled = !signedIn;
}

// The disk the user's job folders hold, and the quota when there is one (GET /api/me).
function diskText(user) {
  if (!Number.isFinite(user.disk_bytes)) return '';
  const quota = Number.isFinite(user.disk_quota_bytes) ? ` of ${bytesText(user.disk_quota_bytes)}` : '';
  return ` · disk ${bytesText(user.disk_bytes)}${quota}`;
}

function focusSignIn() {
  $('signin').scrollIntoView({ behavior: 'smooth', block: 'start' });
  $('token-input').focus();
}

// Everything the page shows depends on who asks: the queue starts again from a fresh snapshot,
// the open job is opened again, and a comparison of the previous user's jobs goes away.
function setToken(token, user) {
  auth.token = token;
  auth.user = user;
  storeToken(token);
  renderAccount();
  queue.selected.clear();
  $('compare').hidden = true;
  releaseObjectUrls('compare-plots');
  // The lists show what this caller may see: the stream's new snapshot brings the active queue
  // and the caller's own jobs, and every job's page is asked for again.
  Object.assign(queue.lists.mine, { ids: [], next: null, generation: queue.lists.mine.generation + 1 });
  renderLists();
  connectQueue();
  loadList('all').then(afterListChange).catch(setConnection);
  onHashChange(true).catch(setConnection);
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
  const token = auth.token;
  const answer = await api('/api/me');
  if (!answer.ok || token !== auth.token) return;
  auth.user = answer.body;
  renderAccount();
  renderLists();
  if (detail.job && detail.access === 'open' && !mayOpen(detail.job)) lockDetail('foreign');
}

// ---------- start ----------

function start() {
  const spec = $('submit-spec');
  const example = JSON.stringify(EXAMPLE_SPEC, null, 2);
  spec.value = example;
  $('submit-reset').addEventListener('click', () => {
    spec.value = example;
    submitForm.parent = null;
    renderClone();
  });
  $('clone-button').addEventListener('click', cloneJob);
  $('submit-button').addEventListener('click', submitSpec);
  $('signin-form').addEventListener('submit', signIn);
  $('signout-button').addEventListener('click', signOut);
  bindDownload($('metrics-csv'));
  bindDownload($('compare-csv'), 'compare.csv');
  $('compare-report').addEventListener('click', (event) => {
    event.preventDefault();
    openReport($('compare-report')).catch((err) => downloadFailed($('compare-report'), `report failed: ${err.message}`));
  });
  renderAccount();
  $('cancel-button').addEventListener('click', cancelJob);
  $('delete-button').addEventListener('click', deleteJob);
  $('compare-button').addEventListener('click', () => showCompare().catch(setConnection));
  $('compare-close').addEventListener('click', (event) => { event.preventDefault(); $('compare').hidden = true; });
  for (const spec of Object.values(LISTS)) {
    $(spec.table).tHead.replaceChildren(el('tr', {}, ...COLUMNS.map(([title, css]) => el('th', { class: css },
      title ?? el('span', { class: 'sr-only' }, 'Compare')))));
  }
  $('active-more').addEventListener('click', () => loadMore('active').catch(setConnection));
  $('my-more').addEventListener('click', () => loadMore('mine').catch(setConnection));
  $('all-older').addEventListener('click', () => turnPage(true).catch(setConnection));
  $('all-newer').addEventListener('click', () => turnPage(false).catch(setConnection));
  window.addEventListener('hashchange', () => onHashChange().catch(setConnection));
  let pending = 0;
  window.addEventListener('resize', () => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(drawCharts);
  });
  connectQueue();
  loadList('all').then(afterListChange).catch(setConnection);
  refreshDevices().catch(setConnection);
  setInterval(() => { if (!document.hidden) refreshDevices().catch(setConnection); }, DEVICE_POLL_MS);
  setInterval(() => { if (!document.hidden) refreshLists().catch(setConnection); }, RESYNC_MS);
  onHashChange().catch(setConnection);
}

start();
