// Home: what computers cost on the market now (report §5.2.5: the average price of each
// standard configuration) and how that moved over time, with the way to buy one.
import { api, currentSession, showError } from '../api.js';
import { money } from '../format.js';
import { el } from '../dom.js';
import { select } from '../forms.js';

export async function render(main) {
  const [avg, configs] = await Promise.all([api('GET', '/api/v1/market/averages'), api('GET', '/api/v1/market/configs')]);
  const names = configs.map((c) => c.name);
  const plot = el('div', { id: 'history', class: 'plot' });
  const pick = select('Configuration', 'config', names.map((n) => [n, n]), names[0], { id: 'history-config' });
  main.replaceChildren(
    el('h1', {}, 'The market'),
    el('p', {}, 'What a computer of each standard configuration costs, as the median of the providers that can host it. ',
      el('a', { href: '#/configs' }, 'Pick a configuration'), ' to edit it and search the providers, or see ',
      el('a', { href: '#/computers' }, 'my computers'), '.'),
    averagesTable(avg.configs),
    el('h2', {}, 'Over time'),
    el('div', { class: 'toolbar' }, pick),
    plot);
  const stop = { plot: null };
  const draw = async () => {
    if (stop.plot) stop.plot.destroy();
    stop.plot = null;
    try {
      stop.plot = await drawHistory(plot, pick.querySelector('select').value);
    } catch (err) {
      showError(err);
    }
  };
  pick.querySelector('select').addEventListener('change', draw);
  if (names.length) await draw();
  else plot.replaceChildren(el('p', { class: 'empty' }, 'There are no configurations yet.'));
  const resize = () => stop.plot && stop.plot.setSize(plotSize(plot));
  window.addEventListener('resize', resize);
  return () => {
    window.removeEventListener('resize', resize);
    if (stop.plot) stop.plot.destroy();
  };
}

function averagesTable(configs) {
  if (!configs.length) {
    return el('p', { class: 'empty' }, 'No averages yet: the node computes them from the providers’ offers as they arrive. Check the ',
      el('a', { href: '#/node' }, 'Node'), ' page for peers, then reload.');
  }
  return el('div', { class: 'scroll' }, el('table', { id: 'averages', class: 'cards' },
    el('thead', {}, el('tr', {}, ['Configuration', 'Running per hour', 'Storage per day', 'Providers', ''].map((h) => el('th', {}, h)))),
    el('tbody', {}, configs.map((a) => el('tr', { 'data-config': a.config, 'data-stale': a.stale ? 'true' : null },
      el('td', { 'data-label': 'Configuration' }, el('a', { href: `#/configs/${encodeURIComponent(a.config)}` }, a.config)),
      el('td', { 'data-label': 'Running per hour', 'data-field': 'running_per_hour', class: 'num' }, never(a) ? '—' : money(a.running_per_hour)),
      el('td', { 'data-label': 'Storage per day', 'data-field': 'storage_per_day', class: 'num' }, never(a) ? '—' : money(a.storage_per_day)),
      el('td', { 'data-label': 'Providers', 'data-field': 'providers' }, String(a.providers),
        never(a) ? el('div', { class: 'note' }, 'No provider has offered a machine that can host it yet.')
          : a.stale ? el('div', { class: 'warn' }, 'No provider can host it now: these are the last prices known.') : null),
      el('td', { 'data-label': '' }, el('a', { class: 'button', href: `#/search/${encodeURIComponent(a.config)}` }, 'Search providers')))))));
}

function plotSize(box) {
  const width = Math.max(280, box.clientWidth || 600);
  return { width, height: Math.min(320, Math.round(width * 0.55)) };
}

// drawHistory plots the samples of config's average in box and answers the plot (null if
// there is none).
async function drawHistory(box, config) {
  const samples = await api('GET', `/api/v1/market/averages/history?config=${encodeURIComponent(config)}`);
  if (!samples.length) {
    box.replaceChildren(el('p', { class: 'empty' }, `No samples of “${config}” yet: the node records its average each time it recomputes it from the offers. Come back in a few minutes.`));
    return null;
  }
  if (!currentSession().packages) {
    box.replaceChildren(el('p', { class: 'empty' }, 'This binary was built without the front-end packages (uPlot): run `make build` and restart the node to see the plot.'),
      historyTable(samples));
    return null;
  }
  loadCSS('/vendor/uplot/uPlot.min.css');
  const { default: uPlot } = await import('/vendor/uplot/uPlot.esm.js');
  // For the plot only: micro-units as floating units. Tables show the exact decimals.
  const data = [
    samples.map((s) => Date.parse(s.time) / 1000),
    samples.map((s) => s.running_per_hour / 1e6),
    samples.map((s) => s.storage_per_day / 1e6),
  ];
  const fmt = (u, v) => (v === null || v === undefined ? '' : v.toFixed(2));
  box.replaceChildren();
  return new uPlot({
    ...plotSize(box),
    series: [
      {},
      { label: 'Running per hour', stroke: '#2456c7', width: 2, scale: 'run', value: fmt },
      { label: 'Storage per day', stroke: '#1f7a3a', width: 2, scale: 'store', value: fmt },
    ],
    axes: [{}, { scale: 'run', label: 'per hour' }, { scale: 'store', side: 1, label: 'per day', grid: { show: false } }],
  }, data, box);
}

function historyTable(samples) {
  return el('div', { class: 'scroll' }, el('table', {},
    el('thead', {}, el('tr', {}, ['Time', 'Running per hour', 'Storage per day', 'Providers'].map((h) => el('th', {}, h)))),
    el('tbody', {}, samples.slice(-20).reverse().map((s) => el('tr', {},
      el('td', {}, new Date(s.time).toLocaleString()), el('td', {}, money(s.running_per_hour)),
      el('td', {}, money(s.storage_per_day)), el('td', {}, String(s.providers)))))));
}

export function loadCSS(href) {
  if (document.querySelector(`link[href="${href}"]`)) return;
  document.head.append(el('link', { rel: 'stylesheet', href }));
}

// never: no provider could ever host the configuration, so there is no price to show.
function never(a) {
  return a.stale && !a.running_per_hour && !a.storage_per_day;
}
