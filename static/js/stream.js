// The live event streams (/api/events for the queue, /api/jobs/{id}/events for the open job):
// server-sent events read over fetch, because EventSource cannot send the token's header. Each
// stream starts with a snapshot and resumes with Last-Event-ID after a dropped connection.

import { readAnswer } from './api.js';

// Reconnecting a dropped stream waits this long, doubling after each failure up to the maximum.
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;

// Reads a text/event-stream as EventSource does (`event:`, `data:` and `id:` lines; a blank line
// ends a message; `:` lines are keep-alives) but with the token in a header, which EventSource
// cannot send. After a dropped connection it reconnects with Last-Event-ID, so the server replays
// what was missed or starts again from a snapshot; it waits RETRY_MIN_MS first, doubling (with a
// little jitter, so a restarted server is not hit by every tab at once) up to RETRY_MAX_MS while
// failures go on. `handlers` maps event names to functions of the parsed data. A 401, 403 or 404
// stops the stream (asking again would get the same answer) and goes to `onRefused(answer)`.
// `client` is the API client whose token the stream carries; the answer has `close()`.
export function openStream(client, path, { handlers, onOpen = () => {}, onError = () => {}, onRefused = () => {} }) {
  const controller = new AbortController();
  let closed = false;
  let lastEventId = null;
  let delay = RETRY_MIN_MS;
  let message = { event: '', data: [], id: null };

  function dispatch() {
    const { event, data, id } = message;
    message = { event: '', data: [], id: null };
    if (id !== null) lastEventId = id;
    const handler = handlers[event || 'message'];
    if (closed || !data.length || !handler) return;
    // Like an EventSource listener, a failing handler is reported and the stream goes on.
    try { handler(JSON.parse(data.join('\n'))); } catch (err) { setTimeout(() => { throw err; }); }
  }

  function onLine(line) {
    if (line === '') { dispatch(); return; }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') message.event = value;
    else if (field === 'data') message.data.push(value);
    else if (field === 'id' && !value.includes('\0')) message.id = value;
  }

  async function readOnce() {
    const headers = { Accept: 'text/event-stream' };
    if (lastEventId !== null) headers['Last-Event-ID'] = lastEventId;
    const response = await client.authFetch(path, { headers, signal: controller.signal });
    if ([401, 403, 404].includes(response.status)) {
      closed = true;
      onRefused(await readAnswer(response));
      return;
    }
    if (response.status === 429) delay = Math.max(delay, Number(response.headers.get('retry-after')) * 1000 || 0);
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    onOpen();
    delay = RETRY_MIN_MS;
    message = { event: '', data: [], id: null };
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error('the server closed the stream');
      buffer += decoder.decode(value, { stream: true });
      // A line ends at \n, \r\n or \r; a \r that ends the buffer may be the first half of \r\n.
      for (let end = /\r\n|\n|\r(?!$)/.exec(buffer); end; end = /\r\n|\n|\r(?!$)/.exec(buffer)) {
        const line = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        onLine(line);
      }
    }
  }

  (async () => {
    while (!closed) {
      try {
        await readOnce();
      } catch (err) {
        if (!closed) onError(err);
      }
      if (closed) return;
      await new Promise((resolve) => { setTimeout(resolve, delay * (0.8 + Math.random() * 0.4)); });
      delay = Math.min(RETRY_MAX_MS, delay * 2);
    }
  })();
  return { close() { closed = true; controller.abort(); } };
}
