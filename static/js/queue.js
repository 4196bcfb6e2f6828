// The devices and the job lists: the active queue, the signed-in student's jobs and every job,
// kept live by the queue's event stream (/api/events) with a slow resync as a safety net.
//
// State: `createQueueState()` makes the object the entry module keeps as `state.queue`; only this
// module changes it, except `selected`, which account.js clears for a new caller. The view reads
// `state.session` (who asks) and `state.detail.id` (the open job's row is marked), and calls the
// job page, the compare button and the account through `app.views`.

import { $, el, enc, setConnection } from './dom.js';
import { badge, fixed, gib, jobHref, jobLink, ownerText, percent, shortId, TERMINAL } from './format.js';
import { etaText, jobFraction, meter, progressBar, progressText } from './progress.js';
import { mayOpen } from './api.js';
import { openStream } from './stream.js';
import { deviceReservations } from './reservations.js';

// The devices have no events: their memory and utilisation are asked for again this often.
const DEVICE_POLL_MS = 5000;
// A safety net only: events carry every change, this catches anything a proxy swallowed.
const RESYNC_MS = 30000;
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
export function createQueueState() {
  return {
    rows: new Map(), devices: [], selected: new Set(), progressAt: new Map(), stream: null, painted: false,
    lists: Object.fromEntries(Object.keys(LISTS).map((name) => [name, { ids: [], next: null, at: null, before: [], generation: 0 }])),
  };
}

// A queued job's place, and why it waits when the server says (`pending_reason`).
function queuePlace(job) {
  if (job.state !== 'queued') return '—';
  return [job.position != null ? `#${job.position}` : '—',
    job.pending_reason && el('div', { class: 'pending-reason' }, String(job.pending_reason))];
}

// The lists' view over `app` ({state, client, views}): what the entry module and the other views
// call to draw, load and follow the lists.
export function createQueueView(app) {
  const { state: { session, queue, detail }, client, views } = app;
  const listShown = (name) => !LISTS[name].signedIn || Boolean(session.token);

  // One card per device: its memory and utilisation when known, and the job it runs.
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
          : el('span', { class: 'muted' }, 'idle')),
        deviceReservations(device));
    });
    $('devices').replaceChildren(...(cards.length ? cards : [el('p', { class: 'muted' }, 'No devices reported.')]));
  }

  // The box that picks a job for Compare.
  function compareBox(job) {
    return el('input', {
      type: 'checkbox', class: 'compare-pick', 'aria-label': `Compare ${job.name}`,
      checked: queue.selected.has(job.id),
      onclick: (event) => event.stopPropagation(),
      onchange: (event) => {
        if (event.target.checked) queue.selected.add(job.id); else queue.selected.delete(job.id);
        // The same job may be shown in another list too: its box there follows.
        for (const box of document.querySelectorAll(`tr[data-job-id="${CSS.escape(job.id)}"] .compare-pick`)) box.checked = event.target.checked;
        views.compare.updateButton();
      },
    });
  }

  // A job's row; a click or Enter opens its page.
  function jobRow(job) {
    const fraction = jobFraction(job);
    return el('tr', {
      dataset: { jobId: job.id, state: job.state },
      class: job.id === detail.id ? 'selected' : null,
      tabindex: '0',
      onclick: () => { location.hash = jobHref(job.id); },
      onkeydown: (event) => { if (event.key === 'Enter') location.hash = jobHref(job.id); },
    },
    el('td', {}, mayOpen(session, job) && compareBox(job)),
    el('td', { class: 'name' }, jobLink(job.id, job.name)),
    el('td', { class: 'mono', title: job.id }, shortId(job.id)),
    el('td', { class: 'owner' }, ownerText(session.user, job)),
    el('td', {}, badge(job.state), job.cancel_requested && !TERMINAL.has(job.state) && el('span', { class: 'muted' }, ' cancelling')),
    el('td', {}, job.device ?? '—'),
    el('td', { class: 'col-progress' }, fraction != null && progressBar(fraction), progressText(job.progress)),
    el('td', { class: 'num' }, fixed(job.progress?.images_per_sec, 1)),
    el('td', { class: 'num eta' }, etaText(job)),
    el('td', { class: 'num queue-place' }, queuePlace(job)),
    el('td', { class: 'num' }, percent(job.test_metrics?.test_acc ?? job.final_metrics?.test_acc)));
  }

  // Draws every list the caller may see from `queue`, and the paging buttons under them.
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
    views.compare.updateButton();
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
    views.jobPage.syncLocked();
  }

  function listPath(name, cursor, limit) {
    const query = [LISTS[name].query, `limit=${limit}`, cursor && `cursor=${enc(cursor)}`].filter(Boolean).join('&');
    return `/api/jobs?${query}`;
  }

  // The browser keeps the last answer and asks with its ETag (`no-cache`): an unchanged list costs
  // a 304, not the rows again.
  const getPage = (path) => client.getJson(path, { cache: 'no-cache' });

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
    queue.devices = await client.getJson('/api/devices');
    renderDevices();
  }

  // State changes (queued, started, finished) move other jobs too (queue positions, devices), so
  // they reload the lists, coalesced; progress events patch one row in place.
  let refreshTimer = 0;
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      Promise.all([refreshLists(), refreshDevices(), views.account.refreshBudget()]).catch(setConnection);
    }, 150);
  }

  // The queue's stream is public; with a token it also carries the caller's own jobs' private
  // events and results, so a change of token starts it again from a fresh snapshot. Its snapshot
  // holds the first pages of the active queue and of the caller's jobs (`pages.active`,
  // `pages.mine`), what the page opens with.
  function connectQueue() {
    queue.stream?.close();
    queue.stream = openStream(client, `/api/events?limit=${PAGE}`, {
      onOpen: () => {
        setConnection(null);
        if (session.token && !session.user) views.account.checkToken().catch(() => {});
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
          views.jobPage.syncLocked();
        },
      },
    });
  }

  // Each list's column heads, drawn once: the first (the compare boxes) titled for screen readers.
  function renderHeads() {
    for (const spec of Object.values(LISTS)) {
      $(spec.table).tHead.replaceChildren(el('tr', {}, ...COLUMNS.map(([title, css]) => el('th', { class: css },
        title ?? el('span', { class: 'sr-only' }, 'Compare')))));
    }
  }

  // A new caller (signed in or out): their own list starts empty, and the stream's new snapshot
  // brings the active queue and their jobs, while every job's page is asked for again.
  function restartForCaller() {
    queue.selected.clear();
    Object.assign(queue.lists.mine, { ids: [], next: null, generation: queue.lists.mine.generation + 1 });
    renderLists();
    connectQueue();
    loadList('all').then(afterListChange).catch(setConnection);
  }

  // The lists' buttons, and the first load: the stream, every job's first page, the devices; then
  // the devices polled and the lists resynced while the tab is visible.
  function start() {
    renderHeads();
    $('active-more').addEventListener('click', () => loadMore('active').catch(setConnection));
    $('my-more').addEventListener('click', () => loadMore('mine').catch(setConnection));
    $('all-older').addEventListener('click', () => turnPage(true).catch(setConnection));
    $('all-newer').addEventListener('click', () => turnPage(false).catch(setConnection));
    connectQueue();
    loadList('all').then(afterListChange).catch(setConnection);
    refreshDevices().catch(setConnection);
    setInterval(() => { if (!document.hidden) refreshDevices().catch(setConnection); }, DEVICE_POLL_MS);
    setInterval(() => { if (!document.hidden) refreshLists().catch(setConnection); }, RESYNC_MS);
  }

  return { start, renderLists, scheduleRefresh, restartForCaller };
}
