// trainq dashboard, the entry module: devices, the queue, one job's page, a comparison, a submit
// form and the account. Plain ES modules from js/, no framework, no build step, nothing from a CDN.
//
// State flows one way: this module creates the page's state (`state`: who asks, the lists, the
// open job, the submit form), the API client that carries the session's token, and the token
// files (images and downloads) over it, and hands all of them to each view as one `app` object.
// Views call each other through `app.views` at the moment they need to, so no module holds
// another's variables and there are no import cycles. Each view's `start()` binds its buttons and
// does its first load; the job page starts last, as it opens the job the address names.

import { createApiClient, createSession } from './js/api.js';
import { createTokenFiles } from './js/files.js';
import { createQueueState, createQueueView } from './js/queue.js';
import { createDetailState, createJobPage } from './js/job-page.js';
import { createJobOutputs } from './js/job-outputs.js';
import { createCompareView } from './js/compare.js';
import { createSubmitView } from './js/submit.js';
import { createAccountView } from './js/account.js';
import { createUsersView } from './js/users.js';

const state = {
  session: createSession(),
  queue: createQueueState(),
  detail: createDetailState(),
  submit: { parent: null },
};
const views = {};
// A 401 to the current token signs out: the account view, created below, handles it.
const client = createApiClient(state.session, (answer) => views.account.tokenRefused(answer));
const app = { state, client, files: createTokenFiles(client), views };
Object.assign(views, {
  account: createAccountView(app),
  submit: createSubmitView(app),
  compare: createCompareView(app),
  queue: createQueueView(app),
  jobOutputs: createJobOutputs(app),
  jobPage: createJobPage(app),
  users: createUsersView(app),
});

views.submit.start();
views.account.start();
views.users.start();
views.compare.start();
views.queue.start();
views.jobPage.start();
