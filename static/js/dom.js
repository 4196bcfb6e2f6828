// Building the page's nodes, and the two small things every view writes to: a result box and the
// connection line in the top bar. Every piece of data goes in through text nodes, never as markup,
// so nothing a user typed (a job name, a note, a spec) can become HTML or a script.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** encodeURIComponent, short: every id and cursor put into a URL goes through it. */
export const enc = encodeURIComponent;

// The one way nodes are built: strings become text nodes, so user input can never become markup.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'style') Object.assign(node.style, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) node.append(child);
  }
  return node;
}

/** A term and its value in a `<dl>` of facts. */
export function fact(term, ...value) {
  return [el('dt', {}, term), el('dd', {}, ...value)];
}

/** Shows an outcome in a `.result` box: `kind` is '', 'ok', 'error' or 'notice'. */
export function showResult(target, kind, nodes) {
  target.className = `result ${kind}`;
  target.replaceChildren(...[nodes].flat().filter((n) => n != null && n !== false));
}

/** The connection line in the top bar: live with the time of the last news, or offline and why. */
export function setConnection(error) {
  const status = $('connection');
  status.classList.toggle('offline', Boolean(error));
  status.textContent = error ? `offline — ${error.message ?? error}` : `live · ${new Date().toLocaleTimeString()}`;
}
