// My accounts (report: myaccounts, §5.2.4): the balance and what moved it; as a buyer what each
// VM has cost, across its migrations; as a provider the income of each machine, broken down
// by the VMs stored on it. From the ledger, through this node's mirror of it.
import { api, currentSession, follow, showError, short } from '../api.js';
import { money, when } from '../format.js';
import { el, fill } from '../dom.js';

export async function render(main) {
  const box = el('div', { id: 'account' });
  main.replaceChildren(el('h1', {}, 'My accounts'), box);
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      fill(box, await draw());
    } catch (err) {
      if (err.code === 'coordinator_unreachable') {
        box.replaceChildren(el('p', { class: 'empty', id: 'coordinator-unreachable' },
          'The ledger cannot be read now: no coordinator answers this node. Balances and charges are kept by the coordinators; check the ',
          el('a', { href: '#/node' }, 'Node'), ' page for peers and try again in a moment.'));
      }
      showError(err);
    } finally {
      busy = false;
    }
  };
  await refresh();
  return await follow('kind=ledger', refresh);
}

async function draw() {
  const me = currentSession().peer;
  const id = await api('GET', '/api/v1/id');
  const [a, vms, machines] = await Promise.all([
    api('GET', '/api/v1/ledger/account'),
    api('GET', '/api/v1/market/vms').catch(() => []),
    id.provider ? api('GET', '/api/v1/market/machines').catch(() => []) : [],
  ]);
  const v = a.view;
  const acct = v.account;
  const leases = v.leases || [];
  const bought = leases.filter((l) => l.buyer === me);
  const sold = leases.filter((l) => l.provider === me);
  return [
    el('dl', { class: 'facts', id: 'summary' },
      el('dt', {}, 'Balance'), el('dd', {}, el('strong', { id: 'balance', class: acct.balance < 0 ? 'bad' : '' }, money(acct.balance))),
      el('dt', {}, 'Deposited'), el('dd', { 'data-field': 'deposited' }, money(acct.deposited)),
      el('dt', {}, 'Spent on VMs'), el('dd', { 'data-field': 'spent' }, money(acct.spent)),
      el('dt', {}, 'Earned as a provider'), el('dd', { 'data-field': 'earned' }, money(acct.earned)),
      el('dt', {}, 'Sent'), el('dd', { 'data-field': 'sent' }, money(acct.sent)),
      el('dt', {}, 'Received'), el('dd', { 'data-field': 'received' }, money(acct.received)),
      el('dt', {}, 'Next periods cost'), el('dd', { 'data-field': 'upcoming' }, money(v.upcoming)),
      a.pending ? el('dt', {}, 'Not yet settled') : null,
      a.pending ? el('dd', { 'data-field': 'pending' }, `${a.pending} entr${a.pending === 1 ? 'y' : 'ies'} of this node wait for the coordinator`) : null),
    v.low ? el('p', { id: 'low-balance', class: 'banner error' },
      el('strong', {}, 'Your balance is low. '),
      `It does not pay the coming periods of your VMs (${money(v.upcoming)} a round): when it runs out they will be stopped (never deleted). Ask a coordinator for a deposit.`) : null,
    el('h2', {}, 'What my computers cost'),
    charges(bought, vms),
    el('h2', {}, 'Income from my machines'),
    id.provider ? income(sold, machines) : el('section', { id: 'income' }, el('p', { class: 'empty' }, 'This node does not sell machines, so it earns nothing. ', el('a', { href: '#/machines' }, 'My machines'), ' says how to become a provider.'), el('p', { class: 'note' }, 'Total income ', el('strong', { id: 'income-total' }, money(0)))),
    el('h2', {}, 'Statement'),
    statement(v.lines || []),
  ];
}

// charges is one row per VM of the leases bought: a VM that migrated has several.
function charges(leases, vms) {
  if (!leases.length) {
    return el('p', { class: 'empty' }, 'You have stored no VM yet. ', el('a', { href: '#/configs' }, 'Pick a configuration'), ' to buy one.');
  }
  const byVM = group(leases, (l) => l.vm);
  let total = 0;
  const rows = [...byVM].map(([id, ls]) => {
    const storage = sum(ls, 'storage_charged');
    const running = sum(ls, 'running_charged');
    total += storage + running;
    const last = latest(ls);
    const v = vms.find((x) => x.id === id);
    return el('tr', { 'data-vm': id, 'data-status': last.status },
      el('td', { class: 'id', 'data-label': 'VM', title: id }, short(id), v ? el('div', { class: 'note' }, v.config.name) : null),
      el('td', { class: 'id', 'data-label': 'Provider', title: last.provider }, short(last.provider),
        ls.length > 1 ? el('div', { class: 'note' }, `${ls.length - 1} migration${ls.length > 2 ? 's' : ''}`) : null),
      el('td', { 'data-label': 'Status' }, el('span', { class: `status ${last.status}` }, last.ended && !last.next ? 'ended' : last.status),
        last.unpaid ? el('div', { class: 'warn' }, 'a running period went unpaid: the VM is to be stopped') : null),
      el('td', { class: 'num', 'data-label': 'Storage', 'data-field': 'storage' }, money(storage)),
      el('td', { class: 'num', 'data-label': 'Running', 'data-field': 'running' }, money(running)),
      el('td', { class: 'num', 'data-label': 'Total', 'data-field': 'total' }, el('strong', {}, money(storage + running))));
  });
  return el('div', { class: 'scroll' }, el('table', { id: 'charges', class: 'cards' },
    el('thead', {}, el('tr', {}, ['VM', 'Provider', 'Status', 'Storage', 'Running', 'Total'].map((h) => el('th', {}, h)))),
    el('tbody', {}, rows),
    el('tfoot', {}, el('tr', {}, el('th', { colspan: '5' }, 'All my computers'), el('th', { class: 'num', id: 'charges-total' }, money(total))))));
}

// income is a block per machine, a row per VM stored on it.
function income(leases, machines) {
  if (!leases.length) {
    return el('section', { id: 'income' }, el('p', { class: 'empty' }, 'No buyer has stored a VM on your machines yet. ',
      el('a', { href: '#/machines' }, 'My machines'), ' shows their terms; ', el('a', { href: '#/market' }, 'the marketplace'), ' what others ask.'),
    el('p', { class: 'note' }, 'Total income ', el('strong', { id: 'income-total' }, money(0))));
  }
  let total = 0;
  const blocks = [...group(leases, (l) => l.machine)].map(([mid, ls]) => {
    const m = machines.find((x) => x.id === mid);
    let sub = 0;
    const rows = [...group(ls, (l) => l.vm)].map(([id, vl]) => {
      const storage = sum(vl, 'storage_charged');
      const running = sum(vl, 'running_charged');
      sub += storage + running;
      const last = latest(vl);
      return el('tr', { 'data-vm': id },
        el('td', { class: 'id', 'data-label': 'VM', title: id }, short(id)),
        el('td', { class: 'id', 'data-label': 'Buyer', title: last.buyer }, short(last.buyer)),
        el('td', { 'data-label': 'Status' }, el('span', { class: `status ${last.status}` }, last.ended ? (last.next ? 'moved away' : 'ended') : last.status)),
        el('td', { class: 'num', 'data-label': 'Storage', 'data-field': 'storage' }, money(storage)),
        el('td', { class: 'num', 'data-label': 'Running', 'data-field': 'running' }, money(running)),
        el('td', { class: 'num', 'data-label': 'Total', 'data-field': 'total' }, money(storage + running)));
    });
    total += sub;
    return el('div', { class: 'machine-income', 'data-machine': mid },
      el('h3', {}, m ? m.name : `Machine ${short(mid)}`, m ? null : el('span', { class: 'note' }, ' (removed)'), ' — ', el('span', { 'data-field': 'machine-total' }, money(sub))),
      el('div', { class: 'scroll' }, el('table', { class: 'cards' },
        el('thead', {}, el('tr', {}, ['VM', 'Buyer', 'Status', 'Storage', 'Running', 'Total'].map((h) => el('th', {}, h)))),
        el('tbody', {}, rows))));
  });
  return el('section', { id: 'income' }, blocks, el('p', { class: 'total' }, 'Total income ', el('strong', { id: 'income-total' }, money(total))));
}

function statement(lines) {
  if (!lines.length) return el('p', { class: 'empty' }, 'No deposits or transfers yet. A coordinator’s operator deposits money into accounts (virtuoso deposit).');
  const sorted = [...lines].sort((a, b) => b.height - a.height);
  return el('div', { class: 'scroll' }, el('table', { id: 'statement', class: 'cards' },
    el('thead', {}, el('tr', {}, ['Time', 'What', 'With', 'Amount', 'Memo'].map((h) => el('th', {}, h)))),
    el('tbody', {}, sorted.map((l) => el('tr', { 'data-type': l.type },
      el('td', { 'data-label': 'Time' }, when(l.time)),
      el('td', { 'data-label': 'What' }, l.type),
      el('td', { class: 'id', 'data-label': 'With', title: l.peer }, short(l.peer)),
      el('td', { class: 'num', 'data-label': 'Amount', 'data-field': 'amount' }, money(l.amount)),
      el('td', { 'data-label': 'Memo' }, l.memo || ''))))));
}

function group(list, key) {
  const out = new Map();
  for (const x of list) {
    const k = key(x);
    if (!out.has(k)) out.set(k, []);
    out.get(k).push(x);
  }
  return out;
}

function sum(list, field) {
  return list.reduce((n, x) => n + (x[field] || 0), 0);
}

// latest is the lease a VM is under now: the one no migration moved on from, else the newest.
function latest(ls) {
  return ls.find((l) => !l.next) || [...ls].sort((a, b) => Date.parse(b.created) - Date.parse(a.created))[0];
}
