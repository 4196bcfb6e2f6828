// How numbers, times, sizes and a job's small facts read on the page. Pure functions of their
// arguments (the few that return nodes build them with `el`), shared by every view.

import { el, enc } from './dom.js';

/** A job's states after which nothing about it changes any more. */
export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'timeout']);

/** How each metric is titled, in the order a report lists them. */
export const METRIC_NAMES = {
  test_acc: 'Test acc', test_loss: 'Test loss', precision: 'Precision', recall: 'Recall',
  specificity: 'Specificity', f1: 'F1', auc: 'AUC', train_acc: 'Train acc', train_loss: 'Train loss',
};

/** The first eight characters of an id: enough to tell jobs apart on one page. */
export const shortId = (id) => String(id).slice(0, 8);
/** Bytes as GiB with one decimal. */
export const gib = (bytes) => (bytes / 2 ** 30).toFixed(1);
/** A number with `digits` decimals, or a dash when there is none. */
export const fixed = (x, digits) => (Number.isFinite(x) ? x.toFixed(digits) : '—');
/** A fraction as a percentage with one decimal, or a dash. */
export const percent = (x) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '—');
/** A timestamp in the reader's locale, or a dash. */
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');

/** Bytes in the largest binary unit that keeps the number at least 1. */
export function bytesText(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

// The server's estimate for a queued job: rough by nature, so rounded to minutes (or hours).
export function roughDuration(seconds) {
  if (!Number.isFinite(seconds)) return null;
  const minutes = Math.max(1, Math.round(seconds / 60));
  return minutes < 120 ? `~${minutes} min` : `~${Math.round(minutes / 60)} h`;
}

/** Seconds as `42s`, `3m 5s` or `2h 10m`, or a dash. */
export function durationText(seconds) {
  if (!Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

// Accuracies read best as percentages, losses with four decimals, the rest with three.
export function metricText(name, value) {
  if (name.endsWith('_acc')) return percent(value);
  if (name.endsWith('_loss')) return fixed(value, 4);
  return fixed(value, 3);
}

// A cell of a group or comparison table: the mean, and ± std (n) when there were several runs.
export function cellText(name, cell) {
  if (!cell) return '—';
  const value = metricText(name, cell.mean);
  if (cell.std == null) return value;
  return `${value} ± ${metricText(name, cell.std)} (n=${cell.n})`;
}

// A sweep's values as a student reads them: `/image_size = 256, /optimizer/lr = 0.0001`.
export function paramsText(params) {
  return Object.entries(params).map(([pointer, value]) => `${pointer} = ${JSON.stringify(value)}`).join(', ');
}

/** The hash that opens a job's page. */
export const jobHref = (id) => `#job=${enc(id)}`;
/** A link that opens a job's page. */
export const jobLink = (id, text) => el('a', { href: jobHref(id) }, text);
/** A job's state as a coloured badge. */
export const badge = (state) => el('span', { class: `badge state-${state}` }, state);

// A job's owner, marked when it is the signed-in user (`user`: GET /api/me's answer, or null).
export const ownerText = (user, job) => [job.owner ?? '—', user && job.owner === user.name && el('span', { class: 'muted' }, ' (you)')];
