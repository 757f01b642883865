// The node: its identity and roles, the ledger's coordinators as this node sees them, its
// connected peers, and the way to its event log.
import { api, short, remedy } from '../api.js';
import { el } from '../dom.js';
import { money, when } from '../format.js';

export async function render(main) {
  const [id, peers] = await Promise.all([api('GET', '/api/v1/id'), api('GET', '/api/v1/peers')]);
  const ledger = el('div', { id: 'ledger-status', 'data-state': 'loading' }, el('p', { class: 'empty' }, 'Asking the coordinators…'));
  const roles = ['buyer', id.provider && 'provider', id.coordinator && 'coordinator'].filter(Boolean).join(', ');
  main.replaceChildren(
    el('h1', {}, 'Node'),
    el('dl', { class: 'facts', id: 'identity' },
      el('dt', {}, 'Peer ID'), el('dd', { class: 'mono', id: 'peer-id' }, id.peer_id),
      el('dt', {}, 'Roles'), el('dd', {}, roles),
      el('dt', {}, 'Profile'), el('dd', {}, id.profile),
      el('dt', {}, 'Version'), el('dd', {}, id.version),
      el('dt', {}, 'Addresses'), el('dd', {}, el('ul', { class: 'mono' }, (id.addrs || []).map((a) => el('li', {}, a))))),
    el('p', {}, el('a', { href: '#/events', id: 'events-link' }, 'The event log'), ': what happened on this node, as it happens.'),
    el('h2', {}, 'Ledger'),
    ledger,
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
  ledgerStatus(ledger);
}

// ledgerStatus fills box with the coordinators' raft group as this node's mirror sees it.
async function ledgerStatus(box) {
  let st;
  try {
    st = await api('GET', '/api/v1/ledger/status');
  } catch (err) {
    box.dataset.state = 'unreachable';
    box.replaceChildren(el('p', { class: 'empty' }, el('strong', {}, 'No coordinator answers. '), err.message, ' ', remedy(err.code)));
    return;
  }
  box.dataset.state = st.leader ? 'ok' : 'no-leader';
  box.replaceChildren(el('dl', { class: 'facts' },
    el('dt', {}, 'Leader'), el('dd', { class: 'mono', 'data-field': 'leader' }, st.leader || 'none elected now'),
    el('dt', {}, 'Answered by'), el('dd', { class: 'mono' }, `${short(st.self)} (${st.state})`),
    el('dt', {}, 'Coordinators'), el('dd', { 'data-field': 'coordinators' }, el('ul', { class: 'mono' }, (st.coordinators || st.servers || []).map((p) => el('li', {}, p)))),
    el('dt', {}, 'Entries settled'), el('dd', { 'data-field': 'height' }, String(st.meta?.height ?? 0)),
    el('dt', {}, 'Last tick'), el('dd', {}, when(st.meta?.tick)),
    el('dt', {}, 'Money supply'), el('dd', { 'data-field': 'supply' }, money(st.meta?.supply ?? 0))));
}
