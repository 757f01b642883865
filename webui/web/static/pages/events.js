// The event log (report §6.1.10): what happened on this node, newest first, filtered by kind
// (or a family of kinds) and VM, and kept live from the log's stream with the same filters.
import { api, follow, showError, short } from '../api.js';
import { el } from '../dom.js';
import { field, onSubmit, text } from '../forms.js';

// The kinds of records (node.EventKinds) and their families, for the filter's suggestions;
// the node says so if one is unknown.
const kinds = ['vm', 'vm.status', 'vm.changed', 'lease', 'lease.created', 'lease.ended', 'machine', 'machine.added', 'machine.edited',
  'machine.removed', 'migration', 'migration.step', 'ledger', 'ledger.charged', 'ledger.payment', 'ledger.low_balance', 'ledger.stop',
  'ledger.refused', 'ledger.evidence', 'events', 'events.lost'];

export async function render(main) {
  const f = el('form', { id: 'event-filter', class: 'grid' },
    field('Kind', 'kind', '', { list: 'event-kinds', placeholder: 'all (or vm, lease, ledger, migration…)' }),
    el('datalist', { id: 'event-kinds' }, kinds.map((k) => el('option', { value: k }))),
    field('VM', 'vm', '', { placeholder: 'an ID or its first hex digits' }),
    field('After record', 'after', '', { kind: 'int', placeholder: 'seq; empty for the newest' }),
    field('At most', 'limit', '100', { kind: 'int', hint: '1 to 1000 records' }),
    el('div', { class: 'actions wide' }, el('button', { type: 'submit' }, 'Show')));
  const list = el('div', { id: 'event-list' });
  const live = el('span', { id: 'events-live', class: 'note' });
  main.replaceChildren(el('h1', {}, 'Event log'), f, el('p', {}, live), list);

  let stop = null;
  let closed = false;
  const show = async () => {
    if (stop) stop();
    stop = null;
    const filters = new URLSearchParams();
    for (const k of ['kind', 'vm']) if (text(f, k)) filters.set(k, text(f, k));
    const q = new URLSearchParams(filters);
    if (text(f, 'limit')) q.set('limit', text(f, 'limit'));
    // Records after a given one are the oldest after it; without, the newest.
    if (text(f, 'after')) q.set('after', text(f, 'after'));
    else q.set('newest', 'true');
    const recs = await api('GET', `/api/v1/events?${q}`);
    const body = el('tbody', {}, recs.slice().reverse().map(row));
    list.replaceChildren(recs.length ? el('div', { class: 'scroll' }, el('table', { id: 'events', class: 'cards' },
      el('thead', {}, el('tr', {}, ['#', 'Time', 'Kind', 'VM', 'Peer', 'What happened'].map((h) => el('th', {}, h)))), body))
      : el('p', { class: 'empty', id: 'no-events' }, 'No record matches these filters yet. Clear them to see everything, or wait: new records appear here as they happen.'));
    const s = await follow(filters.toString(), (rec) => {
      let tb = list.querySelector('#events tbody');
      if (!tb) {
        list.replaceChildren(el('div', { class: 'scroll' }, el('table', { id: 'events', class: 'cards' },
          el('thead', {}, el('tr', {}, ['#', 'Time', 'Kind', 'VM', 'Peer', 'What happened'].map((h) => el('th', {}, h)))), el('tbody'))));
        tb = list.querySelector('#events tbody');
      }
      if (tb.querySelector(`tr[data-seq="${rec.seq}"]`)) return;
      tb.prepend(row(rec));
    });
    if (closed) s();
    else stop = s;
    live.textContent = 'Live: new records appear at the top.';
  };
  onSubmit(f, show);
  try {
    await show();
  } catch (err) {
    showError(err);
  }
  return () => {
    closed = true;
    if (stop) stop();
  };
}

function row(r) {
  return el('tr', { 'data-kind': r.kind, 'data-seq': String(r.seq), 'data-vm': r.vm || null },
    el('td', { 'data-label': '#' }, String(r.seq)),
    el('td', { 'data-label': 'Time' }, new Date(r.time).toLocaleString()),
    el('td', { 'data-label': 'Kind' }, el('span', { class: `kind ${r.kind.split('.')[0]}` }, r.kind)),
    el('td', { class: 'id', 'data-label': 'VM', title: r.vm || '' }, short(r.vm)),
    el('td', { class: 'id', 'data-label': 'Peer', title: r.peer || '' }, short(r.peer)),
    el('td', { 'data-label': 'What happened' }, r.message));
}
