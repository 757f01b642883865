// Configurations (report: browsemachines, editconfiguration, registerconfiguration): the
// standard and preconfigured configurations and the buyer's own, each with its market average;
// one of them opened in a form to save an edited copy under a new name, and to search the
// providers that can host it.
import { api, showNote } from '../api.js';
import { money, mb } from '../format.js';
import { el } from '../dom.js';
import { field, onSubmit, text, int } from '../forms.js';

export async function render(main, [name]) {
  const configs = await api('GET', '/api/v1/market/configs');
  const list = el('div', { id: 'config-list' });
  const edit = el('div', { id: 'config-edit' });
  main.replaceChildren(
    el('h1', {}, name ? `Configuration ${name}` : 'Configurations'),
    edit,
    el('h2', {}, 'All configurations'),
    el('p', { class: 'note' }, 'Preconfigured ones come with an OS image; bare ones with an empty disk. Edit one to change its resources, or search the providers that can host it.'),
    list);
  const show = (cs) => list.replaceChildren(table(cs));
  show(configs);
  if (name) {
    const c = configs.find((x) => x.name === name);
    if (!c) {
      edit.replaceChildren(el('p', { class: 'empty' }, `There is no configuration “${name}”: pick one from the list below.`));
    } else {
      edit.replaceChildren(form(c, async (saved) => {
        show(await api('GET', '/api/v1/market/configs'));
        list.querySelector(`tr[data-config="${CSS.escape(saved.name)}"]`)?.classList.add('fresh');
      }));
    }
  }
}

function table(configs) {
  if (!configs.length) {
    return el('p', { class: 'empty' }, 'There are no configurations: this node knows no standard ones and no provider offers an image yet. Check the ', el('a', { href: '#/node' }, 'Node'), ' page for peers.');
  }
  return el('div', { class: 'scroll' }, el('table', { id: 'configs', class: 'cards' },
    el('thead', {}, el('tr', {}, ['Name', 'Processor', 'OS', 'Speed', 'Memory', 'Disk', 'Kind', 'Average price', ''].map((h) => el('th', {}, h)))),
    el('tbody', {}, configs.map((c) => el('tr', { 'data-config': c.name },
      el('td', { 'data-label': 'Name' }, c.name, c.own ? el('div', { class: 'note' }, 'yours') : null),
      el('td', { 'data-label': 'Processor', 'data-field': 'processor' }, c.processor),
      el('td', { 'data-label': 'OS', 'data-field': 'os' }, c.os || '—'),
      el('td', { 'data-label': 'Speed', 'data-field': 'speed_bogomips' }, `${c.speed_bogomips} bogomips`),
      el('td', { 'data-label': 'Memory', 'data-field': 'memory_mb' }, mb(c.memory_mb)),
      el('td', { 'data-label': 'Disk', 'data-field': 'disk_mb' }, mb(c.disk_mb)),
      el('td', { 'data-label': 'Kind', 'data-field': 'preconfigured' }, c.preconfigured ? 'preconfigured (OS image)' : 'bare'),
      el('td', { 'data-label': 'Average price', 'data-field': 'average' }, average(c.average)),
      el('td', { 'data-label': '', class: 'actions' },
        el('a', { class: 'button', 'data-action': 'search', href: `#/search/${encodeURIComponent(c.name)}` }, 'Search providers'),
        el('a', { class: 'button', 'data-action': 'edit', href: `#/configs/${encodeURIComponent(c.name)}` }, 'Edit')))))));
}

function average(a) {
  if (!a || a.stale || !a.providers) return el('span', { class: 'note' }, 'no provider can host it now');
  return el('span', {}, `${money(a.running_per_hour)} per hour running`, el('br'), `${money(a.storage_per_day)} per day stored`,
    el('div', { class: 'note' }, `median of ${a.providers} provider${a.providers === 1 ? '' : 's'}`));
}

// form is the configuration c, to be saved edited under a name of the buyer's.
function form(c, saved) {
  const search = el('a', { class: 'button', 'data-action': 'search', href: `#/search/${encodeURIComponent(c.name)}` }, 'Search providers for this');
  const f = el('form', { id: 'config-form', class: 'grid' },
    field('Name', 'name', c.own ? c.name : `my-${c.name}`, { hint: c.own ? 'Saving under the same name replaces it.' : 'A standard configuration keeps its name: save your edit under one of yours.' }),
    field('Processor', 'processor', c.processor),
    field('OS', 'os', c.os || '', { hint: c.preconfigured ? 'The OS of its image.' : 'Empty for a bare machine.' }),
    field('Speed (bogomips)', 'speed_bogomips', c.speed_bogomips, { kind: 'int' }),
    field('Memory (MB)', 'memory_mb', c.memory_mb, { kind: 'int' }),
    field('Disk (MB)', 'disk_mb', c.disk_mb, { kind: 'int' }),
    el('p', { class: 'note wide' }, c.preconfigured ? `Preconfigured: its disk starts from the OS image ${c.image.slice(0, 19)}…, which stays with the copy.` : 'Bare: its disk starts empty.'),
    el('div', { class: 'actions wide' }, el('button', { type: 'submit' }, 'Save configuration'), search));
  return onSubmit(f, async () => {
    const body = {
      name: text(f, 'name'), processor: text(f, 'processor'), os: text(f, 'os') || undefined,
      speed_bogomips: int(f, 'speed_bogomips'), memory_mb: int(f, 'memory_mb'), disk_mb: int(f, 'disk_mb'),
      image: c.image || undefined,
    };
    const out = await api('POST', '/api/v1/market/configs', body);
    search.href = `#/search/${encodeURIComponent(out.name)}`;
    showNote(`Saved configuration “${out.name}”. Search the providers that can host it, or edit it further.`);
    await saved(out);
  });
}
