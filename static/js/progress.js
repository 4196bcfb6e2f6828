// A job's progress as the page shows it: the fraction done, the time left, and the bars. Computed
// here because live progress events carry only the worker's position (phase, epoch, step).

import { el } from './dom.js';
import { durationText, roughDuration } from './format.js';

// Epochs per phase: a list row carries them (`epochs_per_phase`), a full job has its spec; the
// progress snapshot only knows the current phase's.
function phaseEpochs(job) {
  if (Array.isArray(job.epochs_per_phase)) return job.epochs_per_phase.map((epochs) => Number(epochs) || 0);
  const phases = Array.isArray(job.spec?.phases) ? job.spec.phases : [];
  return phases.map((phase) => Number(phase?.epochs) || 0);
}

// Overall fraction across phases, as the server's `Job::fraction_done`; computed here because
// live progress events carry the worker's position only.
export function jobFraction(job) {
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

// A running job's ETA is computed here from its progress; a queued one's is the server's estimate
// of when it starts (`eta_at`, Unix seconds).
export function etaText(job) {
  if (job.state === 'queued') {
    const estimate = job.eta_at != null ? roughDuration(Math.max(0, job.eta_at - Date.now() / 1000)) : null;
    return estimate ? el('span', { title: 'estimated wait before it starts' }, estimate) : '—';
  }
  return durationText(etaSeconds(job));
}

/** A job's fraction done as a bar (an ARIA progressbar). */
export function progressBar(fraction) {
  const pct = (fraction * 100).toFixed(1);
  return el('div', {
    class: 'progress-bar', role: 'progressbar', title: `${pct}%`,
    'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': pct,
  }, el('div', { class: 'progress-fill', style: { width: `${pct}%` } }));
}

/** The worker's position in words, and what it is doing when it says. */
export function progressText(p) {
  if (!p) return null;
  const text = `phase ${p.phase}/${p.phases} · epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.steps}`;
  return el('div', { class: 'progress-text' }, text, p.activity && el('span', { class: 'muted' }, ` · ${p.activity}`));
}

// A meter is a progress bar for resources; its own class keeps `.progress-bar` meaning jobs only.
export const meter = (fraction) => el('div', { class: 'meter' },
  el('div', { class: 'meter-fill', style: { width: `${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%` } }));
