// The application shell: the session, the router and the navigation. Each page is a module
// of its own under pages/, exporting render(main, params) and, if it holds anything open
// (an event stream, a console), returning a function that closes it.
import { loadSession, api, showError, clearBanner } from './api.js';
import { el } from './dom.js';

const pages = {
  '': () => import('./pages/computers.js'),
  computers: () => import('./pages/computers.js'),
  console: () => import('./pages/console.js'),
  node: () => import('./pages/node.js'),
};

let closeCurrent = null;

async function route() {
  const [name, ...params] = location.hash.replace(/^#\/?/, '').split('/');
  const load = pages[name];
  const main = document.getElementById('main');
  if (closeCurrent) {
    closeCurrent();
    closeCurrent = null;
  }
  clearBanner();
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.page === (name || 'computers'));
  }
  document.getElementById('nav').classList.remove('open');
  if (!load) {
    main.replaceChildren(el('p', { class: 'empty' }, `There is no page “${name}”. `, el('a', { href: '#/' }, 'Go to my computers.')));
    return;
  }
  main.replaceChildren(el('p', { class: 'empty' }, 'Loading…'));
  try {
    const page = await load();
    closeCurrent = (await page.render(main, params.map(decodeURIComponent))) || null;
  } catch (err) {
    main.replaceChildren();
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
