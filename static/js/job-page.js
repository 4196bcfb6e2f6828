// The job page (`#job=ID`): a job's summary and spec for anyone, and for its owner or an admin
// the live part fed by the job's own stream (/api/jobs/{id}/events): progress, epochs and charts,
// the log, and the outputs (job-outputs.js); plus cancel, delete and "Clone & edit" (submit.js).
//
// State: `createDetailState()` makes the object the entry module keeps as `state.detail`; this
// module and job-outputs.js change it. A reader without access sees a notice instead of the
// private part, and the summary then follows the queue's rows (`syncLocked`).

import { $, el, enc, fact, setConnection, showResult } from './dom.js';
import { badge, bytesText, fixed, jobHref, jobLink, ownerText, paramsText, percent, shortId, TERMINAL, when } from './format.js';
import { etaText, jobFraction, progressBar, progressText } from './progress.js';
import { errorNodes, mayOpen } from './api.js';
import { openStream } from './stream.js';
import { drawCharts } from './charts.js';

// The log shows its last LOG_LINES lines and keeps LOG_KEEP of them, so a long run stays light.
const LOG_LINES = 60;
const LOG_KEEP = 400;
const CANCELLABLE = new Set(['queued', 'running']);
/** The states a job can be resumed from (with its checkpoint) with more time. */
const RESUMABLE = new Set(['timeout', 'failed', 'cancelled']);

// `access`: 'open' (the job's own stream feeds it), 'signed-out' or 'foreign' (only the queue's
// public facts); `generation` tells a stale answer from the current one after a reopen.
export function createDetailState() {
  return {
    id: null, job: null, epochs: [], logLines: [], logOffset: 0, stream: null, outputsKey: null, classes: null,
    access: null, generation: 0,
  };
}

// The job id the address names (`#job=ID`), or null.
function hashJobId() {
  const match = /^#job=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

// The job page's view over `app` ({state, client, files, views}).
export function createJobPage(app) {
  const { state: { session, queue, detail }, client, files, views } = app;

  // The summary of the open job, and which of its buttons apply to its state and the reader.
  function renderDetailJob() {
    const job = detail.job;
    if (!job) return;
    $('detail-message').hidden = true;
    $('detail-body').hidden = false;
    $('detail-title').replaceChildren('Job ', el('span', { class: 'job-name' }, job.name));
    const fraction = jobFraction(job);
    $('detail-summary').replaceChildren(
      ...fact('ID', el('span', { class: 'mono' }, job.id)),
      ...fact('Owner', ownerText(session.user, job)),
      ...fact('State', badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && ' (cancel requested)'),
      ...(job.state === 'queued' && job.position != null ? fact('Queue position', `#${job.position}`) : []),
      ...(job.state === 'queued' && job.pending_reason ? fact('Waiting for', String(job.pending_reason)) : []),
      ...fact('Device', job.device ?? '—'),
      ...(job.progress?.precision ? fact('Precision', job.progress.precision) : []),
      ...fact('Progress', fraction != null && progressBar(fraction), job.progress ? progressText(job.progress) : '—'),
      ...fact('Images/s', fixed(job.progress?.images_per_sec, 1)),
      ...skippedFacts(job.progress?.data),
      ...trainingFacts(job.spec, job.progress?.features),
      ...fact('ETA', etaText(job)),
      ...(job.time_limit ? fact('Time limit', `${job.time_limit} of device time`) : []),
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
    $('resume-button').hidden = !(RESUMABLE.has(job.state) && job.resume_point && !job.deleted_at && detail.access === 'open');
    $('detail-error-box').hidden = !job.error;
    $('detail-error').textContent = job.error ?? '';
    $('job-spec').textContent = JSON.stringify(job.spec, null, 2);
    $('metrics-csv').href = `/api/jobs/${enc(job.id)}/metrics?format=csv`;
  }

  // Files the worker left out because they did not fully decode, per split: the count and, for
  // the first few, the name and the reason (so a student sees why a folder has fewer images).
  function skippedFacts(data) {
    const splits = Object.entries(data ?? {}).filter(([, load]) => load.skipped > 0);
    if (!splits.length) return [];
    return fact('Skipped files', ...splits.map(([split, load]) => el('div', { class: 'note' },
      `${split}: ${load.skipped} skipped`,
      ...(load.skipped_files ?? []).map((file) => el('div', { class: 'mono' }, `${file.path}: ${file.reason}`)))));
  }

  // The spec's augmentation and class weights, and why a phase ran without cached activations
  // (an augmenting phase computes its frozen layers every step).
  function trainingFacts(spec, features) {
    const off = Object.entries(features ?? {}).filter(([, use]) => use.state === 'off' && use.reason);
    return [
      ...(spec?.augment ? fact('Augmentation', el('span', { class: 'mono' }, JSON.stringify(spec.augment))) : []),
      ...(spec?.class_weight ? fact('Class weights', el('span', { class: 'mono' }, JSON.stringify(spec.class_weight)), ' (the training loss is weighted)') : []),
      ...(off.length ? fact('Activation cache', ...off.map(([phase, use]) => el('div', { class: 'note' }, `phase ${phase}: off, ${use.reason}`))) : []),
    ];
  }

  // Epoch events may repeat what a snapshot already had: they are keyed by phase and epoch.
  function upsertEpoch(epoch) {
    const at = detail.epochs.findIndex((e) => e.phase === epoch.phase && e.epoch === epoch.epoch);
    if (at >= 0) detail.epochs[at] = epoch; else detail.epochs.push(epoch);
    detail.epochs.sort((a, b) => a.phase - b.phase || a.epoch - b.epoch);
  }

  function renderEpochs() {
    drawCharts(detail.epochs);
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

  async function refreshDetailJob() {
    const id = detail.id;
    if (!id) return;
    const answer = await client.request(`/api/jobs/${enc(id)}`);
    if (id !== detail.id || !answer.ok) return;
    detail.job = answer.body;
    renderDetailJob();
    await views.jobOutputs.loadOutputs();
  }

  // Empties every part of the job page, before another job (or none) is shown.
  function clearDetail() {
    Object.assign(detail, { job: null, epochs: [], logLines: [], logOffset: 0, outputsKey: null, classes: null, access: null });
    files.releaseObjectUrls('report-plots');
    files.releaseObjectUrls('cam-gallery');
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
    drawCharts(detail.epochs);
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
        el('button', { type: 'button', class: 'secondary', onclick: views.account.focusSignIn }, 'Sign in')]
      : `This job belongs to ${owner}: its metrics, plots, log and artifacts are visible to its owner and admins only.`);
    $('detail-locked').hidden = false;
    renderDetailJob();
  }

  // A locked page has no stream of its own: the queue calls this after each change of its rows.
  function syncLocked() {
    if (!detail.id || (detail.access !== 'signed-out' && detail.access !== 'foreign')) return;
    const row = queue.rows.get(detail.id);
    if (!row) return;
    // A row has no spec: what the page already has of the job stays, the row's newer facts win.
    detail.job = { ...detail.job, ...row };
    renderDetailJob();
  }

  // Feeds the page from the job's own stream: a snapshot, then progress, epochs, log lines, states.
  function followJob(id) {
    detail.access = 'open';
    detail.stream = openStream(client, `/api/jobs/${enc(id)}/events`, {
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
          views.jobOutputs.loadOutputs().catch(setConnection);
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
    const answer = await client.request(`/api/jobs/${enc(id)}`).catch(() => null);
    if (generation !== detail.generation) return;
    if (!answer?.ok) {
      $('detail-body').hidden = true;
      showResult($('detail-message'), 'error', answer?.status === 404 ? `No job with id ${id}.` : answer ? errorNodes(answer) : 'The server is unreachable.');
      $('detail-message').hidden = false;
      return;
    }
    detail.job = answer.body;
    if (!session.token) lockDetail('signed-out');
    else if (!mayOpen(session, answer.body)) lockDetail('foreign');
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
      const answer = await client.request(`/api/jobs/${enc(id)}/cancel`, { method: 'POST' });
      if (id !== detail.id) return;
      if (answer.ok) showResult(out, 'ok', 'Cancellation requested.');
      else showResult(out, 'error', ['Cancel failed: ', ...errorNodes(answer)]);
    } catch (err) {
      showResult(out, 'error', `Cancel failed: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // Resuming starts a child that continues the job from its checkpoint with a new time limit
  // (`resubmit?resume=true`); the page then shows the child.
  async function resumeJob() {
    const job = detail.job;
    if (!job) return;
    const limit = window.prompt(`Resume “${job.name}” from its checkpoint with a time limit of (e.g. 4h, 90m, 2d):`, job.time_limit ? `${job.time_limit}` : '4h');
    if (!limit) return;
    const button = $('resume-button');
    const out = $('cancel-result');
    button.disabled = true;
    showResult(out, '', 'Resuming…');
    try {
      const answer = await client.request(`/api/jobs/${enc(job.id)}/resubmit?resume=true`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ time_limit: limit.trim() }),
      });
      if (!answer.ok) {
        showResult(out, 'error', ['Resume failed: ', ...errorNodes(answer)]);
        return;
      }
      const child = answer.body.jobs[0];
      showResult(out, 'ok', ['Resumed as ', jobLink(child.id, shortId(child.id)), '.']);
      views.queue.scheduleRefresh();
      window.location.hash = jobHref(child.id);
    } catch (err) {
      showResult(out, 'error', `Resume failed: ${err.message}`);
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
      const answer = await client.request(`/api/jobs/${enc(id)}`, { method: 'DELETE' });
      if (id !== detail.id) return;
      if (!answer.ok) {
        showResult(out, 'error', ['Delete failed: ', ...errorNodes(answer)]);
        return;
      }
      showResult(out, 'ok', `Deleted: ${bytesText(answer.body.freed_bytes ?? 0)} freed.`);
      detail.job = answer.body;
      renderDetailJob();
      views.account.checkToken().catch(setConnection);
      views.queue.scheduleRefresh();
    } catch (err) {
      showResult(out, 'error', `Delete failed: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // The page's buttons, the hash that opens a job, and the charts redrawn to a new width; then the
  // job the address names, if any.
  function start() {
    files.bindDownload($('metrics-csv'));
    $('cancel-button').addEventListener('click', cancelJob);
    $('delete-button').addEventListener('click', deleteJob);
    $('resume-button').addEventListener('click', resumeJob);
    window.addEventListener('hashchange', () => onHashChange().catch(setConnection));
    let pending = 0;
    window.addEventListener('resize', () => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(() => drawCharts(detail.epochs));
    });
    onHashChange().catch(setConnection);
  }

  return { start, onHashChange, lockDetail, syncLocked };
}
