// The node: its identity and roles, its connected peers.
import { api, short } from '../api.js';
import { el } from '../dom.js';

export async function render(main) {
  const [id, peers] = await Promise.all([api('GET', '/api/v1/id'), api('GET', '/api/v1/peers')]);
  const roles = ['buyer', id.provider && 'provider', id.coordinator && 'coordinator'].filter(Boolean).join(', ');
  main.replaceChildren(
    el('h1', {}, 'Node'),
    el('dl', { class: 'facts', id: 'identity' },
      el('dt', {}, 'Peer ID'), el('dd', { class: 'mono', id: 'peer-id' }, id.peer_id),
      el('dt', {}, 'Roles'), el('dd', {}, roles),
      el('dt', {}, 'Profile'), el('dd', {}, id.profile),
      el('dt', {}, 'Version'), el('dd', {}, id.version),
      el('dt', {}, 'Addresses'), el('dd', {}, el('ul', { class: 'mono' }, (id.addrs || []).map((a) => el('li', {}, a))))),
    el('h2', {}, `Peers (${peers.length})`),
    peers.length === 0
      ? el('p', { class: 'empty' }, 'No peer is connected. Add a bootstrap peer (virtuoso node --bootstrap ADDR) or check that the others are running.')
      : el('div', { class: 'scroll' }, el('table', { id: 'peers' },
        el('thead', {}, el('tr', {}, el('th', {}, 'Peer'), el('th', {}, 'Latency'), el('th', {}, 'Agent'), el('th', {}, 'Addresses'))),
        el('tbody', {}, peers.map((p) => el('tr', {},
          el('td', { class: 'mono', title: p.peer_id }, short(p.peer_id)),
          el('td', {}, `${p.latency_ms.toFixed(1)} ms`),
          el('td', {}, p.agent || ''),
          el('td', { class: 'mono' }, (p.addrs || []).join(' '))))))),
  );
}
