// The job page's outputs: test metrics and the confusion table, the server's report plots, the
// Grad-CAM heatmaps, the artifacts and the job's group. They change only with the job's state or
// its epochs, so `loadOutputs` fetches them again only when one of those changed. Everything here
// is private to the job's owner and admins: the job page calls it only for an open job.

import { $, el, enc, fact } from './dom.js';
import { bytesText, cellText, fixed, METRIC_NAMES, metricText, percent, TERMINAL } from './format.js';

// The heatmap groups, each kind of prediction with its title, in the order they are shown.
const CAM_KINDS = [
  ['tp', 'True positives'], ['tn', 'True negatives'], ['fp', 'False positives'], ['fn', 'False negatives'],
];
// Only files the worker writes into cam/ are shown; anything else in the index is ignored.
const CAM_FILE = /^cam\/[A-Za-z0-9_][A-Za-z0-9._-]*$/;

// The metrics any row of a table has, in the order a report lists them.
function presentMetrics(rows) {
  return Object.keys(METRIC_NAMES).filter((name) => rows.some((row) => row.metrics[name]));
}

// The outputs' view over `app` ({state, client, files}): reads and writes `state.detail`'s
// `outputsKey` and `classes`, and nothing else of the state.
export function createJobOutputs(app) {
  const { state: { detail }, client, files } = app;

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
      String(a.url).startsWith('/api/') ? files.downloadLink(a.url, a.name, a.name.split('/').pop()) : a.name,
      el('span', { class: 'muted' }, ` ${bytesText(a.bytes)}`)));
    $('artifacts').replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'None yet.')]));
  }

  function renderReportPlots(job, final) {
    const target = $('report-plots');
    files.releaseObjectUrls('report-plots');
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
    const figure = (kind, title) => files.plotFigure('report-plots', base, kind, title, '', version);
    const figures = [figure('accuracy', 'Accuracy'), figure('loss', 'Loss')];
    if (final?.binary?.roc?.length) figures.push(figure('roc', 'ROC'));
    if (final?.binary || final?.multiclass) figures.push(figure('confusion', 'Confusion matrix'));
    target.replaceChildren(...figures);
  }

  async function renderCams(id) {
    const target = $('cam-gallery');
    const answer = await client.request(`/api/jobs/${enc(id)}/artifacts/cam/index.json`);
    if (id !== detail.id) return;
    files.releaseObjectUrls('cam-gallery');
    if (answer.status === 404) {
      target.replaceChildren(el('p', { class: 'muted cam-empty' }, 'No heatmaps yet.'));
      return;
    }
    if (!answer.ok || !Array.isArray(answer.body)) {
      target.replaceChildren(el('p', { class: 'result error' }, 'The heatmap index (cam/index.json) could not be read.'));
      return;
    }
    const entries = answer.body.filter((entry) => entry && CAM_FILE.test(String(entry.file)));
    const image = (entry, title) => files.tokenImage('cam-gallery', `/api/jobs/${enc(id)}/artifacts/${entry.file}`,
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
    const datasets = await client.getJson('/api/datasets').catch(() => []);
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
    const [metrics, artifacts] = await Promise.all([client.request(`${base}/metrics`), client.request(`${base}/artifacts`)]);
    if (job.id !== detail.id) return;
    if (detail.classes == null) detail.classes = await datasetClasses(job);
    const final = metrics.ok ? metrics.body.final : null;
    renderFinal(final, detail.classes);
    if (artifacts.ok) renderArtifacts(artifacts.body);
    renderReportPlots(job, final);
    await renderCams(job.id);
    await group;
  }

  // The job's group, one row per sweep combination (a repeat group: one row), mean ± std over its
  // runs, the swept values as columns; the open job's combination is marked.
  async function renderGroup(job) {
    const box = $('group-box');
    box.hidden = !job.group_id;
    if (!job.group_id) return;
    const answer = await client.request(`/api/groups/${enc(job.group_id)}`);
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

  return { loadOutputs };
}
