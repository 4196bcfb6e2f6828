// trainq dashboard: polls the JSON API and renders devices, the queue, one job's detail and a
// submit form. Plain DOM, no framework; every piece of data goes in through textContent.
'use strict';

const POLL_MS = 1500;
const LOG_LINES = 60;
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

const $ = (id) => document.getElementById(id);

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

const jobHref = (id) => `#job=${encodeURIComponent(id)}`;
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

// Error bodies are {"error", "detail"}; detail is {field, message} for spec errors and e.g.
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

// ---------- progress ----------

// Overall fraction across phases; phases may have different epoch counts, which only the spec knows.
function jobFraction(job) {
  if (job.state === 'succeeded') return 1;
  const p = job.progress;
  if (!p) return null;
  const specPhases = Array.isArray(job.spec?.phases) ? job.spec.phases : [];
  const phaseCount = Math.max(specPhases.length, p.phases || 0);
  const epochsOf = (i) => Number(specPhases[i]?.epochs) || p.epochs || 0;
  let total = 0;
  for (let i = 0; i < phaseCount; i += 1) total += epochsOf(i);
  let done = 0;
  for (let i = 0; i < (p.phase || 1) - 1; i += 1) done += epochsOf(i);
  done += Math.max(0, (p.epoch || 1) - 1) + (p.steps ? p.step / p.steps : 0);
  return total > 0 ? Math.min(1, Math.max(0, done / total)) : null;
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

function renderDevices(devices, jobsById) {
  const cards = devices.map((device) => {
    const job = device.job ? jobsById.get(device.job) : null;
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

function renderJobs(jobs) {
  const newest = [...jobs].sort((a, b) => Date.parse(b.submitted_at) - Date.parse(a.submitted_at));
  const rows = newest.map((job) => {
    const fraction = jobFraction(job);
    return el('tr', {
      dataset: { jobId: job.id, state: job.state },
      class: job.id === detail.id ? 'selected' : null,
      tabindex: '0',
      onclick: () => { location.hash = jobHref(job.id); },
      onkeydown: (event) => { if (event.key === 'Enter') location.hash = jobHref(job.id); },
    },
    el('td', { class: 'name' }, jobLink(job.id, job.name)),
    el('td', { class: 'mono', title: job.id }, shortId(job.id)),
    el('td', {}, badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && el('span', { class: 'muted' }, ' cancelling')),
    el('td', {}, job.device ?? '—'),
    el('td', { class: 'col-progress' }, fraction != null && progressBar(fraction), progressText(job.progress)),
    el('td', { class: 'num' }, fixed(job.progress?.images_per_sec, 1)),
    el('td', { class: 'num' }, job.state === 'queued' && job.position != null ? `#${job.position}` : '—'),
    el('td', { class: 'num' }, percent(job.final_metrics?.test_acc)));
  });
  const empty = el('tr', {}, el('td', { colspan: '8', class: 'muted' }, 'No jobs yet — submit one below.'));
  $('jobs').tBodies[0].replaceChildren(...(rows.length ? rows : [empty]));
}

async function refreshOverview() {
  const [devices, jobs] = await Promise.all([getJson('/api/devices'), getJson('/api/jobs')]);
  renderDevices(devices, new Map(jobs.map((job) => [job.id, job])));
  renderJobs(jobs);
}

// ---------- job detail ----------

// `loadedKey` remembers a finished job whose outputs are already shown: they can no longer
// change, so they are not fetched again on every poll.
const detail = { id: null, loadedKey: null, metrics: null };

function hashJobId() {
  const match = /^#job=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function fact(term, ...value) {
  return [el('dt', {}, term), el('dd', {}, ...value)];
}

function renderDetailJob(job) {
  $('detail-message').hidden = true;
  $('detail-body').hidden = false;
  $('detail-title').replaceChildren('Job ', el('span', { class: 'job-name' }, job.name));
  $('detail-summary').replaceChildren(
    ...fact('ID', el('span', { class: 'mono' }, job.id)),
    ...fact('State', badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && ' (cancel requested)'),
    ...(job.state === 'queued' && job.position != null ? fact('Queue position', `#${job.position}`) : []),
    ...fact('Device', job.device ?? '—'),
    ...fact('Progress', job.progress ? progressText(job.progress) : '—'),
    ...fact('Attempts', String(job.attempts ?? '—')),
    ...fact('Submitted', when(job.submitted_at)),
    ...fact('Started', when(job.started_at)),
    ...fact('Finished', when(job.finished_at)));
  $('cancel-button').hidden = !CANCELLABLE.has(job.state);
  $('detail-error-box').hidden = !job.error;
  $('detail-error').textContent = job.error ?? '';
  $('job-spec').textContent = JSON.stringify(job.spec, null, 2);
}

function renderMetrics(metrics) {
  detail.metrics = metrics;
  drawCharts();
  const rows = (metrics.epochs ?? []).map((e) => el('tr', {},
    el('td', { class: 'num' }, String(e.phase)), el('td', { class: 'num' }, String(e.epoch)),
    el('td', { class: 'num' }, fixed(e.train_loss, 4)), el('td', { class: 'num' }, percent(e.train_acc)),
    el('td', { class: 'num' }, fixed(e.val_loss, 4)), el('td', { class: 'num' }, percent(e.val_acc)),
    el('td', { class: 'num' }, fixed(e.seconds, 1))));
  const empty = el('tr', {}, el('td', { colspan: '7', class: 'muted' }, 'No finished epochs yet.'));
  $('metrics-table').tBodies[0].replaceChildren(...(rows.length ? rows : [empty]));
  const f = metrics.final;
  $('final-metrics').replaceChildren(...(f
    ? [...fact('Train loss', fixed(f.train_loss, 4)), ...fact('Train acc', percent(f.train_acc)),
      ...fact('Test loss', fixed(f.test_loss, 4)), ...fact('Test acc', percent(f.test_acc))]
    : [el('dd', { class: 'muted' }, 'Not available until the job succeeds.')]));
}

function renderArtifacts(artifacts) {
  // Only same-origin API paths become links, so a stray value can never be a script URL.
  const items = artifacts.map((a) => el('li', {},
    String(a.url).startsWith('/api/') ? el('a', { href: a.url, download: a.name }, a.name) : a.name,
    el('span', { class: 'muted' }, ` ${bytesText(a.bytes)}`)));
  $('artifacts').replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'None yet.')]));
}

function renderLog(text) {
  const pre = $('job-log');
  // Follow the tail only if the reader has not scrolled up to read something.
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
  const lines = String(text).split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  pre.textContent = lines.length ? lines.slice(-LOG_LINES).join('\n') : '(empty)';
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

function clearDetail() {
  detail.loadedKey = null;
  detail.metrics = null;
  $('detail-title').textContent = 'Job';
  for (const id of ['detail-summary', 'final-metrics', 'artifacts', 'detail-error', 'job-log', 'job-spec']) {
    $(id).replaceChildren();
  }
  $('metrics-table').tBodies[0].replaceChildren();
  showResult($('cancel-result'), '', []);
  for (const id of ['detail-error-box', 'cancel-button', 'detail-message']) $(id).hidden = true;
  drawCharts();
}

async function refreshDetail() {
  const id = detail.id;
  if (!id) return;
  const base = `/api/jobs/${encodeURIComponent(id)}`;
  const answer = await api(base);
  if (id !== detail.id) return; // the reader moved on while we waited
  if (!answer.ok) {
    $('detail-body').hidden = true;
    showResult($('detail-message'), 'error', answer.status === 404 ? `No job with id ${id}.` : errorNodes(answer));
    $('detail-message').hidden = false;
    return;
  }
  const job = answer.body;
  renderDetailJob(job);
  const key = `${job.id}:${job.state}`;
  if (TERMINAL.has(job.state) && detail.loadedKey === key) return;
  const [metrics, artifacts, log] = await Promise.all(
    ['metrics', 'artifacts', 'log'].map((part) => api(`${base}/${part}`)));
  if (id !== detail.id) return;
  if (metrics.ok) renderMetrics(metrics.body);
  if (artifacts.ok) renderArtifacts(artifacts.body);
  if (log.ok) renderLog(log.body);
  if (metrics.ok && artifacts.ok && log.ok) detail.loadedKey = key;
}

function onHashChange() {
  const id = hashJobId();
  if (id === detail.id) return;
  detail.id = id;
  $('job-detail').hidden = !id;
  for (const row of $('jobs').querySelectorAll('tr[data-job-id]')) {
    row.classList.toggle('selected', row.dataset.jobId === id);
  }
  clearDetail();
  if (id) {
    $('job-detail').scrollIntoView({ behavior: 'smooth', block: 'start' });
    refreshDetail().catch(setConnection);
  }
}

async function cancelJob() {
  const id = detail.id;
  const button = $('cancel-button');
  const out = $('cancel-result');
  button.disabled = true;
  showResult(out, '', 'Cancelling…');
  try {
    const answer = await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    if (id !== detail.id) return;
    if (answer.ok) showResult(out, 'ok', 'Cancellation requested.');
    else showResult(out, 'error', ['Cancel failed: ', ...errorNodes(answer)]);
  } catch (err) {
    showResult(out, 'error', `Cancel failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
  await Promise.allSettled([refreshOverview(), refreshDetail()]);
}

// ---------- charts ----------

function drawCharts() {
  const epochs = detail.metrics?.epochs ?? [];
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
      refreshOverview().catch(setConnection);
    } else {
      showResult(out, 'error', errorNodes(answer));
    }
  } catch (err) {
    showResult(out, 'error', `Could not reach the server: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---------- polling ----------

function setConnection(error) {
  const status = $('connection');
  status.classList.toggle('offline', Boolean(error));
  status.textContent = error ? `offline — ${error.message ?? error}` : `updated ${new Date().toLocaleTimeString()}`;
}

// Each poll starts only after the previous one finished, so a slow server never piles up requests.
async function tick() {
  if (!document.hidden) {
    const results = await Promise.allSettled([refreshOverview(), refreshDetail()]);
    setConnection(results.find((r) => r.status === 'rejected')?.reason ?? null);
  }
  setTimeout(tick, POLL_MS);
}

function start() {
  const spec = $('submit-spec');
  const example = JSON.stringify(EXAMPLE_SPEC, null, 2);
  spec.value = example;
  $('submit-reset').addEventListener('click', () => { spec.value = example; });
  $('submit-button').addEventListener('click', submitSpec);
  $('cancel-button').addEventListener('click', cancelJob);
  window.addEventListener('hashchange', onHashChange);
  let pending = 0;
  window.addEventListener('resize', () => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(drawCharts);
  });
  onHashChange();
  tick();
}

start();
