// The application shell: the session, the router and the navigation. Each page is a module
// of its own under pages/, exporting render(main, params) and, if it holds anything open
// (an event stream, a console), returning a function that closes it.
import { loadSession, api, showError, showNote, clearBanner, takeCarriedNote } from './api.js';
import { el } from './dom.js';

const pages = {
  '': () => import('./pages/home.js'),
  home: () => import('./pages/home.js'),
  configs: () => import('./pages/configs.js'),
  search: () => import('./pages/search.js'),
  computers: () => import('./pages/computers.js'),
  console: () => import('./pages/console.js'),
  migrate: () => import('./pages/migrate.js'),
  accounts: () => import('./pages/accounts.js'),
  machines: () => import('./pages/machines.js'),
  market: () => import('./pages/market.js'),
  node: () => import('./pages/node.js'),
  events: () => import('./pages/events.js'),
};

// The navigation entry a page belongs under.
const section = { '': 'home', search: 'configs', console: 'computers', migrate: 'computers' };

let closeCurrent = null;
let routed = 0;

async function route() {
  const [name, ...params] = location.hash.replace(/^#\/?/, '').split('/');
  const load = pages[name];
  const main = document.getElementById('main');
  if (closeCurrent) {
    closeCurrent();
    closeCurrent = null;
  }
  clearBanner();
  const note = takeCarriedNote();
  if (note) showNote(note);
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.page === (section[name] ?? name));
  }
  document.getElementById('nav').classList.remove('open');
  if (!load) {
    routed++;
    main.replaceChildren(el('p', { class: 'empty' }, `There is no page “${name}”. `, el('a', { href: '#/' }, 'Go to the home page.')));
    return;
  }
  // Each page draws into a view of its own: one still loading when the user has moved on
  // draws into a view no longer shown, and what it holds open is closed at once.
  const view = el('div', { class: 'view' }, el('p', { class: 'empty' }, 'Loading…'));
  main.replaceChildren(view);
  const mine = ++routed;
  try {
    const page = await load();
    const close = (await page.render(view, params.map(decodeURIComponent))) || null;
    if (mine === routed) closeCurrent = close;
    else if (close) close();
  } catch (err) {
    if (mine !== routed) return;
    view.replaceChildren();
    showError(err);
  }
}

async function start() {
  try {
    await loadSession();
  } catch (err) {
    showError(err);
    return;
  }
  document.getElementById('logout').addEventListener('click', async () => {
    try {
      await api('POST', '/logout');
    } finally {
      location.assign('/login');
    }
  });
  const menu = document.getElementById('menu');
  menu.addEventListener('click', () => {
    const open = document.getElementById('nav').classList.toggle('open');
    menu.setAttribute('aria-expanded', String(open));
  });
  window.addEventListener('hashchange', route);
  route();
}

start();
