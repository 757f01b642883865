// The node's API as the pages see it: /api/v1/... through the session, the CSRF token on every
// POST, errors as APIError with the API's code, and a banner that says what to do about one.

let session = null;

export class APIError extends Error {
  // fields, when the node names them, is the problem of each wrong field of the request
  // body, keyed by its dotted JSON name ("capacity.memory_mb"); forms.js shows them.
  constructor(status, code, message, fields) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields && typeof fields === 'object' ? fields : undefined;
  }
}

// loadSession reads the session's CSRF token and the node's identity.
export async function loadSession() {
  session = await api('GET', '/ui/session');
  return session;
}

export function currentSession() {
  return session;
}

// api calls a route of the UI (paths under /api/v1/ reach the node's API).
export async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') {
    opts.headers['X-CSRF-Token'] = session ? session.csrf : '';
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body ?? {});
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (err) {
    throw new APIError(0, 'unreachable', 'The node does not answer: is `virtuoso node` still running?');
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    throw new APIError(resp.status, data?.code || 'internal', data?.message || text || resp.statusText, data?.fields);
  }
  return data;
}

// What to do about an error, by its code; the API's message says what went wrong.
const remedies = {
  no_session: 'Run `virtuoso ui` on this machine for a new login link.',
  csrf: 'Reload the page and try again.',
  origin_not_allowed: 'Open the UI from the link `virtuoso ui` prints.',
  host_not_allowed: 'Open the UI at http://127.0.0.1:PORT, from the link `virtuoso ui` prints.',
  illegal_action: 'The VM’s status changed meanwhile: the list shows what it allows now.',
  stale: 'It changed meanwhile (a VM’s status, or a provider’s prices): the page shows it as it is now; look again before you retry.',
  not_found: 'It may have been removed: the list shows what there is.',
  unavailable: 'The provider did not answer: try again in a moment.',
  unreachable: 'Start the node again, then reload this page.',
  coordinator_unreachable: 'No coordinator answers: check the Node page for peers, and try again in a moment.',
  not_provider: 'This node does not sell machines: start it with --provider (roles.provider in config.toml).',
  low_balance: 'Ask a coordinator for a deposit (virtuoso deposit on a coordinator node), then try again.',
  no_capacity: 'Search again: another buyer took that capacity.',
  machine_in_use: 'Remove it anyway to stop and delete its VMs (their owners are told), or wait until they are gone.',
  migrating: 'Wait until the migration ends: the Migrate page shows how it goes.',
  reverted: 'The VM is where it was, as it was: try another destination, or again later.',
  invalid: 'Correct what is marked and send it again.',
};

export function remedy(code) {
  return remedies[code] || '';
}

// showError puts err in the banner at the top of the page.
export function showError(err) {
  const banner = document.getElementById('banner');
  const code = err.code || 'internal';
  banner.className = 'banner error';
  banner.dataset.code = code;
  banner.replaceChildren();
  const msg = document.createElement('strong');
  msg.textContent = err.message;
  banner.append(msg);
  const fix = remedy(code);
  if (fix) {
    const p = document.createElement('span');
    p.textContent = ' ' + fix;
    banner.append(p);
  }
  banner.hidden = false;
}

export function showNote(text) {
  const banner = document.getElementById('banner');
  banner.className = 'banner note';
  banner.dataset.code = '';
  banner.textContent = text;
  banner.hidden = false;
}

export function clearBanner() {
  const banner = document.getElementById('banner');
  banner.hidden = true;
  banner.replaceChildren();
}

// follow calls fn with each event-log record from now on (those matching query, parameters of
// /v1/events), as server-sent events; it resolves to a function that stops it. The browser
// reconnects by itself, from the last record it saw.
export async function follow(query, fn) {
  const q = query ? '&' + query : '';
  const last = await api('GET', '/api/v1/events?newest=true&limit=1' + q);
  const after = last.length ? last[last.length - 1].seq : 0;
  const src = new EventSource(`/ui/events?after=${after}${q}`);
  src.addEventListener('record', (ev) => fn(JSON.parse(ev.data)));
  return () => src.close();
}

export { short } from './format.js';

let carried = '';

// carryNote keeps a note to show on the page the router opens next (the banner is cleared on
// every page change).
export function carryNote(text) {
  carried = text;
}

// takeCarriedNote answers the carried note, once.
export function takeCarriedNote() {
  const t = carried;
  carried = '';
  return t;
}
