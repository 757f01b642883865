// Search providers (report: searchproviderspre, storeconfiguration): the provider machines
// that can host a configuration, with what it costs on each for a usage profile, sorted by
// storage, running or total cost; one chosen stores the VM there at the prices shown.
import { api, carryNote, showError, showNote, clearBanner, short } from '../api.js';
import { money, mb, period } from '../format.js';
import { el, fill } from '../dom.js';
import { field, select, onSubmit, text, int, amount } from '../forms.js';

// The search's usage fields as the form asks for them.
const aliases = { 'usage.days': 'days', 'usage.run_seconds_per_day': 'hours', config_name: 'config_name' };

export async function render(main, [name]) {
  const configs = await api('GET', '/api/v1/market/configs');
  const results = el('div', { id: 'search-results' });
  if (!configs.length) {
    main.replaceChildren(el('h1', {}, 'Search providers'),
      el('p', { class: 'empty' }, 'There are no configurations to search for yet. Check the ', el('a', { href: '#/node' }, 'Node'), ' page for peers.'));
    return;
  }
  // A preconfigured configuration is named after its image ("debian@1a2b3c4d"): its bare
  // name finds it too.
  const start = configs.find((c) => c.name === name) || configs.find((c) => name && c.name.startsWith(`${name}@`)) ||
    (name ? null : configs[0]);
  const f = el('form', { id: 'search-form', class: 'grid' },
    select('Configuration', 'config_name', configs.map((c) => [c.name, c.name]), start ? start.name : configs[0].name),
    field('Days stored', 'days', '30', { kind: 'int', hint: 'How long you keep it.' }),
    field('Hours running per day', 'hours', '8', { kind: 'money', hint: '0 to 24' }),
    select('Sort by', 'sort', [['total', 'total cost'], ['storage', 'storage cost'], ['running', 'running cost']], 'total'),
    field('Most in all', 'max_total', '', { kind: 'money', placeholder: 'any' }),
    field('Most for storage', 'max_storage', '', { kind: 'money', placeholder: 'any' }),
    field('Most for running', 'max_running', '', { kind: 'money', placeholder: 'any' }),
    field('Network at least (Mbit/s)', 'min_network_mbps', '', { kind: 'int', placeholder: 'any' }),
    el('fieldset', { class: 'wide grid edits' }, el('legend', {}, 'Change the configuration (empty: as it is)'),
      field('Memory (MB)', 'edit.memory_mb', '', { kind: 'int' }),
      field('Disk (MB)', 'edit.disk_mb', '', { kind: 'int' }),
      field('Speed (bogomips)', 'edit.speed_bogomips', '', { kind: 'int' })),
    el('div', { class: 'actions wide' }, el('button', { type: 'submit' }, 'Search')));
  const pick = f.querySelector('select[name=config_name]');
  const hint = () => {
    const c = configs.find((x) => x.name === pick.value);
    f.querySelector('[name="edit.memory_mb"]').placeholder = String(c.memory_mb);
    f.querySelector('[name="edit.disk_mb"]').placeholder = String(c.disk_mb);
    f.querySelector('[name="edit.speed_bogomips"]').placeholder = String(c.speed_bogomips);
  };
  pick.addEventListener('change', hint);
  hint();
  fill(main,
    el('h1', {}, 'Search providers'),
    el('p', {}, 'Storage is charged at the start of every storage period while the VM is stored, running time at the start of every running period while it runs. ',
      el('a', { href: '#/configs' }, 'All configurations')),
    name && !start ? el('p', { class: 'empty' }, `There is no configuration “${name}”: pick one.`) : null,
    f, results);
  const search = async () => {
    const q = query(f);
    const matches = await api('POST', '/api/v1/market/search', q);
    results.replaceChildren(...resultsView(matches, q, f));
  };
  onSubmit(f, search, aliases);
  if (start) {
    try {
      await search();
    } catch (err) {
      showError(err);
    }
  }
}

// query is the SearchQuery the form says.
function query(f) {
  const edit = {};
  for (const k of ['memory_mb', 'disk_mb', 'speed_bogomips']) {
    const v = int(f, `edit.${k}`);
    if (v !== undefined) edit[k] = v;
  }
  const hours = text(f, 'hours');
  const h = Number(hours);
  const usage = {
    days: int(f, 'days') ?? 0,
    // Hours as seconds; text that is no number goes as typed for the node to name.
    run_seconds_per_day: hours === '' ? 0 : /^\d+(\.\d+)?$/.test(hours) ? Math.round(h * 3600) : hours,
  };
  return {
    config_name: text(f, 'config_name'), edit, usage, sort: text(f, 'sort'),
    max_total: amount(f, 'max_total'), max_storage: amount(f, 'max_storage'), max_running: amount(f, 'max_running'),
    min_network_mbps: int(f, 'min_network_mbps'),
  };
}

function resultsView(matches, q, f) {
  const days = q.usage.days;
  const hours = q.usage.run_seconds_per_day / 3600;
  if (!matches.length) {
    return [el('p', { class: 'empty', id: 'no-results' }, 'No provider can host this configuration under these limits. Raise or clear the price limits, lower the network speed, ask for less memory, disk or speed, or try another configuration. New providers appear here as their offers arrive.')];
  }
  return [
    el('h2', {}, `${matches.length} machine${matches.length === 1 ? '' : 's'} for ${days} days, ${hours} hours a day`),
    el('div', { class: 'scroll' }, el('table', { id: 'results', class: 'cards' },
      el('thead', {}, el('tr', {}, ['Provider', 'Machine', 'Storage', 'Running', 'Total', 'Prices', 'Free', 'Network', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, matches.map((m) => el('tr', { 'data-provider': m.provider, 'data-machine': m.machine },
        el('td', { class: 'id', 'data-label': 'Provider', title: m.provider }, short(m.provider)),
        el('td', { 'data-label': 'Machine' }, m.name, el('div', { class: 'note' }, m.processor)),
        el('td', { class: 'num', 'data-label': 'Storage', 'data-field': 'storage' }, money(m.cost.storage)),
        el('td', { class: 'num', 'data-label': 'Running', 'data-field': 'running' }, money(m.cost.running)),
        el('td', { class: 'num', 'data-label': 'Total', 'data-field': 'total' }, el('strong', {}, money(m.cost.total))),
        el('td', { 'data-label': 'Prices', 'data-field': 'prices' },
          `${money(m.quote.storage_price)} per ${period(m.quote.storage_period)} stored`, el('br'),
          `${money(m.quote.running_price)} per ${period(m.quote.running_period)} running`),
        el('td', { 'data-label': 'Free', 'data-field': 'free' }, `${m.free.speed_bogomips} bogomips`, el('br'), `${mb(m.free.memory_mb)} memory`, el('br'), `${mb(m.free.storage_mb)} disk`),
        el('td', { 'data-label': 'Network', 'data-field': 'network' }, `${m.network_mbps} Mbit/s`),
        el('td', { 'data-label': '' }, el('button', { 'data-action': 'store', onclick: (ev) => store(ev.currentTarget, m, q, f) }, 'Store here')))))))];
}

// store stores the searched configuration on m's machine at the prices shown: a provider that
// changed them meanwhile is refused as stale rather than paid at new prices.
async function store(button, m, q, f) {
  const buttons = [...f.parentElement.querySelectorAll('button[data-action=store]')];
  for (const b of buttons) b.disabled = true;
  clearBanner();
  showNote(`Storing ${q.config_name} on ${m.name} (${short(m.provider)}): the provider creates its disk…`);
  try {
    const v = await api('POST', '/api/v1/market/store', {
      config_name: q.config_name, edit: q.edit, provider: m.provider, machine: m.machine,
      terms: m.terms, expect_running: m.quote.running_price, expect_storage: m.quote.storage_price,
    });
    carryNote(`Stored ${v.config?.name || q.config_name} as VM ${short(v.id)} on ${m.name} (${short(v.provider)}). Start it when you need it.`);
    location.hash = '#/computers';
  } catch (err) {
    showError(err);
    for (const b of buttons) b.disabled = false;
  }
}
