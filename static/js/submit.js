// Submit: the spec editor, sent as a new job (POST /api/jobs) or, after "Clone & edit" on a job's
// page, as that job's resubmit with only the changes (a merge patch). State: `state.submit`, the
// job the editor was cloned from ({ id, name, spec }), or null for a fresh spec.

import { $, el, enc, showResult } from './dom.js';
import { jobLink, shortId } from './format.js';
import { errorNodes } from './api.js';

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

// The submit form's view over `app` ({state, client}).
export function createSubmitView(app) {
  const { state: { session, detail, submit: form }, client } = app;

  // "Clone & edit": the open job's spec in the editor, submitted as a resubmit of that job.
  function cloneJob() {
    const job = detail.job;
    if (!job) return;
    form.parent = { id: job.id, name: job.name, spec: job.spec };
    $('submit-spec').value = JSON.stringify(job.spec, null, 2);
    renderClone();
    $('submit').scrollIntoView({ behavior: 'smooth', block: 'start' });
  }

  // The notice above the editor while it holds a clone, and the submit button's words.
  function renderClone() {
    const parent = form.parent;
    $('submit-clone').hidden = !parent;
    $('submit-button').textContent = parent ? 'Submit clone' : 'Submit job';
    if (!parent) return;
    const fresh = () => { form.parent = null; renderClone(); };
    showResult($('submit-clone'), 'notice', ['Cloning ', jobLink(parent.id, parent.name),
      ': only your changes are sent, and the new job links back to it.',
      el('button', { type: 'button', class: 'secondary', onclick: fresh }, 'Submit as a new job instead')]);
  }

  // Where the editor's text goes: POST /api/jobs, or for a clone the changes as a merge patch.
  function submitRequest(text) {
    const parent = form.parent;
    if (!parent) return { path: '/api/jobs', body: text };
    const edited = JSON.parse(text);
    return { path: `/api/jobs/${enc(parent.id)}/resubmit`, body: JSON.stringify(mergePatch(parent.spec, edited)) };
  }

  // Sends the editor's spec, and shows the queued job(s) or the server's reason.
  async function submitSpec() {
    const out = $('submit-result');
    const button = $('submit-button');
    if (!session.token) {
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
      const answer = await client.request(request.path, {
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
      button.disabled = !session.token;
    }
  }
  // Next to the spec's dataset name: its images per split, class imbalance and what its import
  // left out (GET /api/datasets, read once; the editor's text is parsed on each change).
  let datasets = null;
  async function renderDataset() {
    let name;
    try { name = JSON.parse($('submit-spec').value).dataset; } catch { return; }
    datasets ??= await client.getJson('/api/datasets').catch(() => []);
    const dataset = datasets.find((d) => d.name === name);
    if (!dataset) { $('submit-dataset').textContent = name ? `Dataset ${name}: not on the server` : ''; return; }
    const splits = dataset.splits.map((split) => `${split.name} ${split.images}`).join(', ');
    const imbalance = dataset.class_imbalance != null ? `; class imbalance ${dataset.class_imbalance.toFixed(1)}:1` : '';
    const left = Object.entries(dataset.left_out ?? {}).filter(([, count]) => count > 0)
      .map(([why, count]) => `${count} ${why.replaceAll('_', ' ')}`).join(', ');
    $('submit-dataset').textContent = `Dataset ${dataset.name}: ${splits} images${imbalance}${left ? `; import left out ${left}` : ''}`;
  }

  // The editor starts with the example; the buttons submit, reset and clone.
  function start() {
    const spec = $('submit-spec');
    const example = JSON.stringify(EXAMPLE_SPEC, null, 2);
    spec.value = example;
    spec.addEventListener('change', renderDataset);
    renderDataset();
    $('submit-reset').addEventListener('click', () => {
      spec.value = example;
      form.parent = null;
      renderClone();
    });
    $('clone-button').addEventListener('click', cloneJob);
    $('submit-button').addEventListener('click', submitSpec);
  }

  return { start };
}
