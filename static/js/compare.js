// Compare: the jobs picked in "Your jobs" side by side (GET /api/compare), one row per job or per
// repeat group (mean ± std), with their overlaid plots, a CSV export and the HW report. The picks
// live in `state.queue.selected` (the lists draw the boxes); this view reads them.

import { $, el, enc, setConnection, showResult } from './dom.js';
import { badge, cellText, jobLink, METRIC_NAMES, shortId } from './format.js';
import { errorNodes } from './api.js';

// The comparison's view over `app` ({state, client, files}).
export function createCompareView(app) {
  const { state: { session, queue }, client, files } = app;

  // The ids sent to /api/compare.
  function compareIds() {
    const ids = [...queue.selected];
    if (!$('compare-groups').checked) return ids;
    // A job of a repeat group stands for its whole group, once.
    return [...new Set(ids.map((id) => queue.rows.get(id)?.group_id ?? id))];
  }

  // The compare button counts the picks; with none there is nothing to compare.
  function updateButton() {
    const button = $('compare-button');
    button.textContent = `Compare selected (${queue.selected.size})`;
    button.disabled = queue.selected.size === 0;
  }

  // Asks the server for the comparison of the picks and shows it (signed out: a reason instead).
  async function showCompare() {
    const ids = compareIds();
    const query = `?ids=${enc(ids.join(','))}`;
    const section = $('compare');
    section.hidden = false;
    files.releaseObjectUrls('compare-plots');
    const answer = session.token ? await client.request(`/api/compare${query}`) : null;
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
    // Augmentation and class weights: a column only when some row has them.
    const training = rows.some((row) => row.augment || row.class_weight);
    const trainingText = (row) => [row.augment && `augment: ${row.augment}`, row.class_weight && `class weights: ${row.class_weight}`].filter(Boolean).join('; ') || '—';
    $('compare-table').tHead.replaceChildren(el('tr', {},
      el('th', {}, 'Name'), ...pointers.map((pointer) => el('th', {}, pointer)), ...(training ? [el('th', {}, 'Training')] : []), el('th', {}, 'ID'), el('th', {}, 'State'), el('th', { class: 'num' }, 'Runs'),
      ...metrics.map((name) => el('th', { class: 'num' }, METRIC_NAMES[name] ?? name))));
    $('compare-table').tBodies[0].replaceChildren(...rows.map((row) => el('tr', { dataset: { compareId: row.id } },
      el('td', {}, row.kind === 'job' ? jobLink(row.id, row.name) : `${row.name} (group)`),
      ...pointers.map((pointer) => el('td', { class: 'mono' }, row.params && pointer in row.params ? JSON.stringify(row.params[pointer]) : '—')),
      ...(training ? [el('td', {}, trainingText(row))] : []),
      el('td', { class: 'mono', title: row.id }, shortId(row.id)),
      el('td', {}, row.kind === 'job' ? badge(row.state) : row.state),
      el('td', { class: 'num' }, `${row.succeeded}/${row.jobs.length}`),
      ...metrics.map((name) => el('td', { class: 'num' }, cellText(name, row.metrics[name]))))));
    $('compare-csv').href = `/api/compare${query}&format=csv`;
    $('compare-report').href = `/api/report${query}`;
    const version = rows.map((row) => `${row.state}${row.succeeded}`).join('');
    const figure = (kind, title) => files.plotFigure('compare-plots', '/api/compare/plots', kind, title, query, version);
    $('compare-plots').replaceChildren(figure('accuracy', 'Accuracy'), figure('loss', 'Loss'), figure('roc', 'ROC'));
    section.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }
  // Hides the comparison and frees its plots: a new caller must not see the previous one's jobs.
  function close() {
    $('compare').hidden = true;
    files.releaseObjectUrls('compare-plots');
  }

  // The compare button and the close link; the CSV and report links fetch with the token.
  function start() {
    files.bindDownload($('compare-csv'), 'compare.csv');
    $('compare-report').addEventListener('click', (event) => {
      event.preventDefault();
      files.openReport($('compare-report')).catch((err) => files.downloadFailed($('compare-report'), `report failed: ${err.message}`));
    });
    $('compare-button').addEventListener('click', () => showCompare().catch(setConnection));
    $('compare-close').addEventListener('click', (event) => { event.preventDefault(); $('compare').hidden = true; });
  }

  return { start, updateButton, close };
}
