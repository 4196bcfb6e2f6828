// trainq dashboard: devices, the queue, one job's detail, a comparison and a submit form. Live
// through server-sent events (/api/events for the queue, /api/jobs/{id}/events for the open job),
// which start with a snapshot and resume with Last-Event-ID after a dropped connection. Plain DOM,
// no framework, nothing from a CDN; every piece of data goes in through textContent.
'use strict';

const LOG_LINES = 60;
const LOG_KEEP = 400;
const DEVICE_POLL_MS = 5000;
// A safety net only: events carry every change, this catches anything a proxy swallowed.
const RESYNC_MS = 30000;
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
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

async function api(path, options = {}) {
  const response = await fetch(path, { cache: 'no-store', ...options });
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json().catch(() => null) : await response.text();
  return { ok: response.ok, status: response.status, body };
}

async function getJson(path) {
  const answer = await api(path);
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

// ---------- progress ----------

// The spec's epochs per phase; the progress snapshot only knows the current phase's.
function phaseEpochs(job) {
  const phases = Array.isArray(job.spec?.phases) ? job.spec.phases : [];
  return phases.map((phase) => Number(phase?.epochs) || 0);
}

// Overall fraction across phases.
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
  const batch = Number(job.spec?.batch_size) || 0;
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

// ---------- devices and queue ----------

// `progressAt` remembers when a job's progress last came by event, so a list fetched before that
// moment cannot put an older progress back.
const queue = { jobs: new Map(), devices: [], selected: new Set(), progressAt: new Map() };

function renderDevices() {
  const cards = queue.devices.map((device) => {
    const job = device.job ? queue.jobs.get(device.job) : null;
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
      updateCompareButton();
    },
  });
}

function renderJobs() {
  const newest = [...queue.jobs.values()].sort((a, b) => Date.parse(b.submitted_at) - Date.parse(a.submitted_at));
  const rows = newest.map((job) => {
    const fraction = jobFraction(job);
    return el('tr', {
      dataset: { jobId: job.id, state: job.state },
      class: job.id === detail.id ? 'selected' : null,
      tabindex: '0',
      onclick: () => { location.hash = jobHref(job.id); },
      onkeydown: (event) => { if (event.key === 'Enter') location.hash = jobHref(job.id); },
    },
    el('td', {}, compareBox(job)),
    el('td', { class: 'name' }, jobLink(job.id, job.name)),
    el('td', { class: 'mono', title: job.id }, shortId(job.id)),
    el('td', {}, badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && el('span', { class: 'muted' }, ' cancelling')),
    el('td', {}, job.device ?? '—'),
    el('td', { class: 'col-progress' }, fraction != null && progressBar(fraction), progressText(job.progress)),
    el('td', { class: 'num' }, fixed(job.progress?.images_per_sec, 1)),
    el('td', { class: 'num eta' }, durationText(etaSeconds(job))),
    el('td', { class: 'num' }, job.state === 'queued' && job.position != null ? `#${job.position}` : '—'),
    el('td', { class: 'num' }, percent(job.final_metrics?.test_acc)));
  });
  const empty = el('tr', {}, el('td', { colspan: '10', class: 'muted' }, 'No jobs yet — submit one below.'));
  $('jobs').tBodies[0].replaceChildren(...(rows.length ? rows : [empty]));
  updateCompareButton();
}

function setJobs(jobs, fetchedAt = -Infinity) {
  const previous = queue.jobs;
  queue.jobs = new Map(jobs.map((job) => {
    const known = previous.get(job.id);
    const newer = known && job.state === 'running' && (queue.progressAt.get(job.id) ?? -Infinity) > fetchedAt;
    return [job.id, newer ? { ...job, progress: known.progress } : job];
  }));
  for (const id of [...queue.selected]) if (!queue.jobs.has(id)) queue.selected.delete(id);
  renderJobs();
  renderDevices();
}

async function refreshDevices() {
  queue.devices = await getJson('/api/devices');
  renderDevices();
}

async function refreshOverview() {
  const fetchedAt = performance.now();
  const [devices, jobs] = await Promise.all([getJson('/api/devices'), getJson('/api/jobs')]);
  queue.devices = devices;
  setJobs(jobs, fetchedAt);
}

// State changes (queued, started, finished) move other jobs too (queue positions, devices), so
// they reload the list, coalesced; progress events patch one row in place.
let overviewTimer = 0;
function scheduleOverview() {
  clearTimeout(overviewTimer);
  overviewTimer = setTimeout(() => refreshOverview().catch(setConnection), 150);
}

function connectQueue() {
  const source = new EventSource('/api/events');
  source.addEventListener('open', () => setConnection(null));
  source.addEventListener('error', () => setConnection(new Error('reconnecting…')));
  source.addEventListener('snapshot', (message) => {
    setJobs(JSON.parse(message.data).jobs, performance.now());
    setConnection(null);
  });
  for (const name of ['queued', 'started', 'cancel_requested', 'finished']) {
    source.addEventListener(name, scheduleOverview);
  }
  source.addEventListener('progress', (message) => {
    const event = JSON.parse(message.data);
    const job = queue.jobs.get(event.job_id);
    if (!job) { scheduleOverview(); return; }
    job.progress = event.progress;
    queue.progressAt.set(job.id, performance.now());
    renderJobs();
  });
}

// ---------- job detail ----------

const detail = {
  id: null, job: null, epochs: [], logLines: [], logOffset: 0, source: null, outputsKey: null, classes: null,
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
    ...fact('State', badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && ' (cancel requested)'),
    ...(job.state === 'queued' && job.position != null ? fact('Queue position', `#${job.position}`) : []),
    ...fact('Device', job.device ?? '—'),
    ...fact('Progress', fraction != null && progressBar(fraction), job.progress ? progressText(job.progress) : '—'),
    ...fact('Images/s', fixed(job.progress?.images_per_sec, 1)),
    ...fact('ETA', durationText(etaSeconds(job))),
    ...(job.group_id ? fact('Repeat group', el('span', { class: 'mono' }, job.group_id)) : []),
    ...fact('Attempts', String(job.attempts ?? '—')),
    ...fact('Submitted', when(job.submitted_at)),
    ...fact('Started', when(job.started_at)),
    ...fact('Finished', when(job.finished_at)));
  $('cancel-button').hidden = !CANCELLABLE.has(job.state);
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
    String(a.url).startsWith('/api/') ? el('a', { href: a.url, download: a.name.split('/').pop() }, a.name) : a.name,
    el('span', { class: 'muted' }, ` ${bytesText(a.bytes)}`)));
  $('artifacts').replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'None yet.')]));
}

// A figure of a server-rendered plot: the SVG shown, PNG and SVG offered for the report. A plot
// the server cannot draw yet shows the server's reason instead of a broken image.
function plotFigure(base, kind, title, query, version) {
  const url = (format) => `${base}/${kind}.${format}${query}${query ? '&' : '?'}v=${enc(version)}`;
  const img = el('img', { class: 'plot-img', src: url('svg'), alt: title, dataset: { plot: kind } });
  const figure = el('figure', { class: 'plot' },
    el('a', { href: url('png'), target: '_blank', rel: 'noopener' }, img),
    el('figcaption', {}, title, ' · ', el('a', { href: url('png'), download: '' }, 'PNG'),
      ' · ', el('a', { href: url('svg'), download: '' }, 'SVG')));
  img.addEventListener('error', async () => {
    const answer = await api(url('svg')).catch(() => null);
    figure.replaceChildren(el('figcaption', {}, title),
      el('div', { class: 'result error' }, answer ? errorNodes(answer) : 'Could not load the plot.'));
  }, { once: true });
  return figure;
}

function renderReportPlots(job, final) {
  const target = $('report-plots');
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
  const figures = [plotFigure(base, 'accuracy', 'Accuracy', '', version), plotFigure(base, 'loss', 'Loss', '', version)];
  if (final?.binary?.roc?.length) figures.push(plotFigure(base, 'roc', 'ROC', '', version));
  if (final?.binary || final?.multiclass) figures.push(plotFigure(base, 'confusion', 'Confusion matrix', '', version));
  target.replaceChildren(...figures);
}

async function renderCams(id) {
  const target = $('cam-gallery');
  const answer = await api(`/api/jobs/${enc(id)}/artifacts/cam/index.json`);
  if (id !== detail.id) return;
  if (answer.status === 404) {
    target.replaceChildren(el('p', { class: 'muted cam-empty' }, 'No heatmaps yet.'));
    return;
  }
  if (!answer.ok || !Array.isArray(answer.body)) {
    target.replaceChildren(el('p', { class: 'result error' }, 'The heatmap index (cam/index.json) could not be read.'));
    return;
  }
  const entries = answer.body.filter((entry) => entry && CAM_FILE.test(String(entry.file)));
  const groups = CAM_KINDS.map(([kind, title]) => {
    const items = entries.filter((entry) => entry.kind === kind);
    if (!items.length) return null;
    return el('div', { class: 'cam-group', dataset: { kind } }, el('h4', {}, `${title} (${items.length})`),
      el('div', { class: 'cam-row' }, ...items.map((entry) => el('figure', { class: 'cam' },
        el('a', { href: `/api/jobs/${enc(id)}/artifacts/${entry.file}`, target: '_blank', rel: 'noopener' },
          el('img', { src: `/api/jobs/${enc(id)}/artifacts/${entry.file}`, alt: `${title}: ${entry.path ?? entry.file}` })),
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
  const base = `/api/jobs/${enc(job.id)}`;
  const [metrics, artifacts] = await Promise.all([api(`${base}/metrics`), api(`${base}/artifacts`)]);
  if (job.id !== detail.id) return;
  if (detail.classes == null) detail.classes = await datasetClasses(job);
  const final = metrics.ok ? metrics.body.final : null;
  renderFinal(final, detail.classes);
  if (artifacts.ok) renderArtifacts(artifacts.body);
  renderReportPlots(job, final);
  await renderCams(job.id);
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
  Object.assign(detail, { job: null, epochs: [], logLines: [], logOffset: 0, outputsKey: null, classes: null });
  $('detail-title').textContent = 'Job';
  for (const id of ['detail-summary', 'final-metrics', 'artifacts', 'detail-error', 'job-log', 'job-spec',
    'confusion-table', 'report-plots', 'cam-gallery']) {
    $(id).replaceChildren();
  }
  $('metrics-table').tBodies[0].replaceChildren();
  showResult($('cancel-result'), '', []);
  for (const id of ['detail-error-box', 'cancel-button', 'detail-message']) $(id).hidden = true;
  drawCharts();
}

function followJob(id) {
  const source = new EventSource(`/api/jobs/${enc(id)}/events`);
  detail.source = source;
  const mine = (handler) => (message) => { if (detail.source === source) handler(JSON.parse(message.data)); };
  source.addEventListener('snapshot', mine((snapshot) => {
    detail.job = snapshot.job;
    detail.epochs = snapshot.epochs;
    detail.logLines = snapshot.log.text.split('\n');
    if (detail.logLines[detail.logLines.length - 1] === '') detail.logLines.pop();
    detail.logOffset = snapshot.log.offset;
    renderDetailJob();
    renderEpochs();
    renderLogLines();
    loadOutputs().catch(setConnection);
  }));
  source.addEventListener('progress', mine((event) => {
    if (!detail.job) return;
    detail.job.progress = event.progress;
    renderDetailJob();
  }));
  source.addEventListener('epoch', mine((epoch) => {
    upsertEpoch(epoch);
    renderEpochs();
  }));
  // A line whose offset is below what the snapshot read is already shown.
  source.addEventListener('log', mine((event) => {
    if (event.offset < detail.logOffset) return;
    detail.logOffset = event.offset + 1;
    detail.logLines.push(event.line);
    if (detail.logLines.length > LOG_KEEP) detail.logLines.splice(0, detail.logLines.length - LOG_KEEP);
    renderLogLines();
  }));
  for (const name of ['started', 'cancel_requested', 'finished']) {
    source.addEventListener(name, mine(() => refreshDetailJob().catch(setConnection)));
  }
}

async function onHashChange() {
  const id = hashJobId();
  if (id === detail.id) return;
  detail.source?.close();
  detail.source = null;
  detail.id = id;
  $('job-detail').hidden = !id;
  for (const row of $('jobs').querySelectorAll('tr[data-job-id]')) {
    row.classList.toggle('selected', row.dataset.jobId === id);
  }
  clearDetail();
  if (!id) return;
  $('job-detail').scrollIntoView({ behavior: 'smooth', block: 'start' });
  const answer = await api(`/api/jobs/${enc(id)}`).catch(() => null);
  if (id !== detail.id) return;
  if (!answer?.ok) {
    $('detail-body').hidden = true;
    showResult($('detail-message'), 'error', answer?.status === 404 ? `No job with id ${id}.` : answer ? errorNodes(answer) : 'The server is unreachable.');
    $('detail-message').hidden = false;
    return;
  }
  followJob(id);
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

// ---------- compare ----------

function compareIds() {
  const ids = [...queue.selected];
  if (!$('compare-groups').checked) return ids;
  // A job of a repeat group stands for its whole group, once.
  return [...new Set(ids.map((id) => queue.jobs.get(id)?.group_id ?? id))];
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
  const answer = await api(`/api/compare${query}`);
  const message = $('compare-message');
  message.hidden = answer.ok;
  if (!answer.ok) {
    showResult(message, 'error', errorNodes(answer));
    $('compare-table').tHead.replaceChildren();
    $('compare-table').tBodies[0].replaceChildren();
    $('compare-plots').replaceChildren();
    return;
  }
  const { metrics, rows } = answer.body;
  $('compare-table').tHead.replaceChildren(el('tr', {},
    el('th', {}, 'Name'), el('th', {}, 'ID'), el('th', {}, 'State'), el('th', { class: 'num' }, 'Runs'),
    ...metrics.map((name) => el('th', { class: 'num' }, METRIC_NAMES[name] ?? name))));
  $('compare-table').tBodies[0].replaceChildren(...rows.map((row) => el('tr', { dataset: { compareId: row.id } },
    el('td', {}, row.kind === 'job' ? jobLink(row.id, row.name) : `${row.name} (group)`),
    el('td', { class: 'mono', title: row.id }, shortId(row.id)),
    el('td', {}, row.kind === 'job' ? badge(row.state) : row.state),
    el('td', { class: 'num' }, `${row.succeeded}/${row.jobs.length}`),
    ...metrics.map((name) => el('td', { class: 'num' }, cellText(name, row.metrics[name]))))));
  $('compare-csv').href = `/api/compare${query}&format=csv`;
  const version = rows.map((row) => `${row.state}${row.succeeded}`).join('');
  $('compare-plots').replaceChildren(
    plotFigure('/api/compare/plots', 'accuracy', 'Accuracy', query, version),
    plotFigure('/api/compare/plots', 'loss', 'Loss', query, version),
    plotFigure('/api/compare/plots', 'roc', 'ROC', query, version));
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

async function submitSpec() {
  const out = $('submit-result');
  const button = $('submit-button');
  button.disabled = true;
  showResult(out, '', 'Submitting…');
  try {
    const answer = await api('/api/jobs', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: $('submit-spec').value,
    });
    if (answer.status === 201 && answer.body?.id) {
      showResult(out, 'ok', ['Queued job ', jobLink(answer.body.id, answer.body.id)]);
    } else if (answer.status === 201 && answer.body?.group_id) {
      showResult(out, 'ok', [`Queued a group of ${answer.body.jobs.length} runs: `,
        ...answer.body.jobs.flatMap((job, i) => [i ? ', ' : '', jobLink(job.id, shortId(job.id))])]);
    } else {
      showResult(out, 'error', errorNodes(answer));
    }
  } catch (err) {
    showResult(out, 'error', `Could not reach the server: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---------- start ----------

function start() {
  const spec = $('submit-spec');
  const example = JSON.stringify(EXAMPLE_SPEC, null, 2);
  spec.value = example;
  $('submit-reset').addEventListener('click', () => { spec.value = example; });
  $('submit-button').addEventListener('click', submitSpec);
  $('cancel-button').addEventListener('click', cancelJob);
  $('compare-button').addEventListener('click', () => showCompare().catch(setConnection));
  $('compare-close').addEventListener('click', (event) => { event.preventDefault(); $('compare').hidden = true; });
  window.addEventListener('hashchange', () => onHashChange().catch(setConnection));
  let pending = 0;
  window.addEventListener('resize', () => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(drawCharts);
  });
  connectQueue();
  refreshDevices().catch(setConnection);
  setInterval(() => { if (!document.hidden) refreshDevices().catch(setConnection); }, DEVICE_POLL_MS);
  setInterval(() => { if (!document.hidden) refreshOverview().catch(setConnection); }, RESYNC_MS);
  onHashChange().catch(setConnection);
}

start();
