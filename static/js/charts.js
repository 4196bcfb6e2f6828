// The job page's two live charts (loss and accuracy per epoch, train and validation), drawn on
// canvases with no library. They grow with every epoch event; the server draws the report's plots.

import { $ } from './dom.js';

// The colour of each split's line.
const COLORS = { train: '#2563eb', val: '#ea580c' };

/** Draws both charts from a job's epochs (sorted by phase, then epoch); none draws them empty. */
export function drawCharts(epochs) {
  // Index i starts a new phase when its phase differs from the previous epoch's.
  const boundaries = epochs.flatMap((e, i) => (i > 0 && e.phase !== epochs[i - 1].phase ? [i] : []));
  const pair = (metric) => ['train', 'val'].map((split) => (
    { label: split, color: COLORS[split], values: epochs.map((e) => e[`${split}_${metric}`]) }));
  drawChart($('loss-chart'), 'Loss', pair('loss'), boundaries, (v, span) => v.toFixed(span < 0.1 ? 3 : 2));
  drawChart($('acc-chart'), 'Accuracy', pair('acc'), boundaries,
    (v, span) => `${(v * 100).toFixed(span < 0.05 ? 1 : 0)}%`);
}

// One straight line: the grid, the phase boundaries and the legend's swatches.
function segment(ctx, x1, y1, x2, y2) {
  ctx.beginPath();
  ctx.moveTo(x1, y1);
  ctx.lineTo(x2, y2);
  ctx.stroke();
}

// One chart: `series` are lines ({label, color, values per epoch}), `boundaries` the indexes where
// a phase starts (dashed lines), `tickText(value, span)` how the y axis reads.
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
