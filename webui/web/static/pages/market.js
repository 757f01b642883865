// The provider marketplace (report §5.2.5, getproviders): every live offer in this node's book,
// and the average asked prices per resource, for providers deciding what to charge.
import { api, currentSession, short } from '../api.js';
import { money, mb, period } from '../format.js';
import { el } from '../dom.js';

export async function render(main) {
  const [offers, avg] = await Promise.all([api('GET', '/api/v1/market/offers'), api('GET', '/api/v1/market/averages')]);
  const r = avg.resources;
  const me = currentSession().peer;
  main.replaceChildren(
    el('h1', {}, 'The provider marketplace'),
    el('h2', {}, 'Average asked prices'),
    r.providers
      ? el('dl', { class: 'facts', id: 'resource-averages' },
        el('dt', {}, 'Speed, per 1000 bogomips per hour'), el('dd', { 'data-field': 'speed_per_1000_bogomips_hour' }, money(r.speed_per_1000_bogomips_hour)),
        el('dt', {}, 'Memory, per GB per hour'), el('dd', { 'data-field': 'memory_per_gb_hour' }, money(r.memory_per_gb_hour)),
        el('dt', {}, 'Storage, per GB per day'), el('dd', { 'data-field': 'storage_per_gb_day' }, money(r.storage_per_gb_day)),
        el('dt', {}, 'Over'), el('dd', { 'data-field': 'providers' }, `${r.providers} provider${r.providers === 1 ? '' : 's'} (median)`))
      : el('div', { id: 'resource-averages', class: 'empty' }, 'No averages yet: they are computed from the providers’ offers as they arrive.',
        el('span', { 'data-field': 'speed_per_1000_bogomips_hour', hidden: true }), el('span', { 'data-field': 'memory_per_gb_hour', hidden: true }),
        el('span', { 'data-field': 'storage_per_gb_day', hidden: true })),
    el('h2', {}, `Offers (${offers.length})`),
    offers.length === 0
      ? el('p', { class: 'empty' }, 'No provider offers a machine yet. Offers arrive over the network within seconds of a provider adding a machine; check the ',
        el('a', { href: '#/node' }, 'Node'), ' page for peers. To sell one yourself, see ', el('a', { href: '#/machines' }, 'My machines'), '.')
      : el('div', { class: 'scroll' }, el('table', { id: 'offers', class: 'cards' },
        el('thead', {}, el('tr', {}, ['Provider', 'Machine', 'Processor', 'Free', 'Speed', 'Memory', 'Storage', 'Network'].map((h) => el('th', {}, h)))),
        el('tbody', {}, offers.map((o) => {
          const t = o.terms;
          return el('tr', { 'data-provider': o.provider, 'data-machine': o.machine, class: o.provider === me ? 'mine' : null },
            el('td', { class: 'id', 'data-label': 'Provider', title: o.provider }, short(o.provider), o.provider === me ? el('div', { class: 'note' }, 'you') : null),
            el('td', { 'data-label': 'Machine' }, o.name, (o.images || []).length ? el('div', { class: 'note' }, `${o.images.length} OS image${o.images.length === 1 ? '' : 's'}`) : null),
            el('td', { 'data-label': 'Processor' }, o.processor),
            el('td', { 'data-label': 'Free', 'data-field': 'free' }, `${o.free.speed_bogomips} bogomips`, el('br'), `${mb(o.free.memory_mb)} memory`, el('br'), `${mb(o.free.storage_mb)} disk`),
            el('td', { 'data-label': 'Speed', 'data-field': 'speed_price' }, `${money(t.speed_price)} per ${t.speed_unit} bogomips`, el('div', { class: 'note' }, `per ${period(t.running_period)} running`)),
            el('td', { 'data-label': 'Memory', 'data-field': 'memory_price' }, `${money(t.memory_price)} per ${mb(t.memory_unit)}`, el('div', { class: 'note' }, `per ${period(t.running_period)} running`)),
            el('td', { 'data-label': 'Storage', 'data-field': 'storage_price' }, `${money(t.storage_price)} per ${mb(t.storage_unit)}`, el('div', { class: 'note' }, `per ${period(t.storage_period)} stored`)),
            el('td', { 'data-label': 'Network', 'data-field': 'network' }, `${o.network_mbps} Mbit/s`));
        })))));
}
