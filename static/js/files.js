// Images and downloads behind the token. An <img src> or a plain link cannot send the token's
// header, so their bytes are fetched with it and handed to the browser as object URLs: images are
// shown from them, downloads saved through a temporary link, the HW report opened in a new tab.
// The server-rendered plots (a job's, a comparison's) are built here from those images and links.

import { el, enc } from './dom.js';
import { errorNodes, readAnswer } from './api.js';

// A downloaded file's object URL is kept this long: the browser reads it after the click returns.
const DOWNLOAD_KEEP_MS = 60000;

// The file name the server suggests in Content-Disposition.
function dispositionName(response) {
  const match = /filename="([^"]+)"/.exec(response.headers.get('content-disposition') || '');
  return match ? match[1] : null;
}

// Hands an object URL to the browser as a file to save, through a link clicked at once.
function saveObjectUrl(objectUrl, fileName) {
  const save = el('a', { href: objectUrl, download: fileName, hidden: true });
  document.body.append(save);
  save.click();
  save.remove();
}

/** Shows why a link's download failed, right after the link. */
export function downloadFailed(link, text) {
  link.after(el('span', { class: 'download-error', role: 'alert' }, ` ${text}`));
}

// Fetches a link's file with the token; a failure is shown after the link (a previous failure
// goes first) and answers null. `what` names the action in the message ('download', 'report').
async function fetchLinked(client, link, what) {
  if (link.nextElementSibling?.classList.contains('download-error')) link.nextElementSibling.remove();
  const response = await client.authFetch(link.getAttribute('href'));
  if (response.ok) return response;
  const answer = await readAnswer(response);
  downloadFailed(link, `${answer.status} — ${answer.body?.detail?.message ?? answer.body?.error ?? `${what} failed`}`);
  return null;
}

// The token files of one API client. Object URLs of the images each part of the page shows
// ('report-plots', 'cam-gallery', 'compare-plots') are kept per part: drawing a part again
// revokes its old ones, so a page left open for a whole course does not pile up blobs.
export function createTokenFiles(client) {
  const objectUrls = new Map();

  function releaseObjectUrls(part) {
    for (const url of objectUrls.get(part) ?? []) URL.revokeObjectURL(url);
    objectUrls.delete(part);
  }

  // An <img> whose bytes come from an /api URL fetched with the token; a link around it opens the
  // same bytes full size once loaded. A failure calls `onFailure(answer, img)` (answer null: the
  // server is unreachable) so the caller can show the server's reason instead of a broken image.
  function tokenImage(part, url, props, onFailure) {
    const img = el('img', props);
    (async () => {
      const response = await client.authFetch(url);
      if (!response.ok) {
        onFailure(await readAnswer(response), img);
        return;
      }
      const blob = await response.blob();
      if (!img.isConnected) return; // drawn over while loading
      const objectUrl = URL.createObjectURL(blob);
      if (!objectUrls.has(part)) objectUrls.set(part, new Set());
      objectUrls.get(part).add(objectUrl);
      img.src = objectUrl;
      const link = img.closest('a');
      if (link) link.href = objectUrl;
    })().catch(() => onFailure(null, img));
    return img;
  }

  async function download(link, fileName) {
    const response = await fetchLinked(client, link, 'download');
    if (!response) return;
    const objectUrl = URL.createObjectURL(await response.blob());
    saveObjectUrl(objectUrl, dispositionName(response) || fileName);
    setTimeout(() => URL.revokeObjectURL(objectUrl), DOWNLOAD_KEEP_MS);
  }

  // Makes a link to an /api file work with the token: a plain click could not send the header, so
  // the click fetches the file and saves it through a temporary object-URL link. The href stays
  // the real API URL (what curl would fetch); a failure is shown right after the link.
  function bindDownload(link, fileName = '') {
    link.addEventListener('click', (event) => {
      event.preventDefault();
      download(link, fileName).catch((err) => downloadFailed(link, `download failed: ${err.message}`));
    });
    return link;
  }

  const downloadLink = (url, text, fileName = '') => bindDownload(el('a', { href: url }, text), fileName);

  // Opens the HW report (GET /api/report, behind the token) as a page in a new tab: the tab is
  // opened during the click, so no popup blocker stops it, and shows the HTML through an object
  // URL. Without a tab (blocked anyway) the page is saved as a file instead.
  async function openReport(link) {
    const tab = window.open('', '_blank');
    const response = await fetchLinked(client, link, 'report');
    if (!response) {
      tab?.close();
      return;
    }
    const objectUrl = URL.createObjectURL(new Blob([await response.blob()], { type: 'text/html' }));
    if (tab) tab.location.href = objectUrl;
    else saveObjectUrl(objectUrl, dispositionName(response) || 'trainq-report.html');
    setTimeout(() => URL.revokeObjectURL(objectUrl), DOWNLOAD_KEEP_MS);
  }

  // A figure of a server-rendered plot in a part of the page: the SVG shown (a click opens it full
  // size), PNG and SVG offered for the report. A plot the server cannot draw yet shows the
  // server's reason instead of a broken image.
  function plotFigure(part, base, kind, title, query, version) {
    const url = (format) => `${base}/${kind}.${format}${query}${query ? '&' : '?'}v=${enc(version)}`;
    const figure = el('figure', { class: 'plot' });
    const img = tokenImage(part, url('svg'), { class: 'plot-img', alt: title, dataset: { plot: kind } }, (answer) => {
      figure.replaceChildren(el('figcaption', {}, title),
        el('div', { class: 'result error' }, answer ? errorNodes(answer) : 'Could not load the plot.'));
    });
    figure.append(el('a', { target: '_blank', rel: 'noopener', title: `${title}, full size` }, img),
      el('figcaption', {}, title, ' · ', downloadLink(url('png'), 'PNG'), ' · ', downloadLink(url('svg'), 'SVG')));
    return figure;
  }

  return { releaseObjectUrls, tokenImage, bindDownload, downloadLink, openReport, plotFigure };
}
