// Migrate (report: migrate, startmigration): where a VM can move and what its usage profile
// costs there, next to what it costs where it is; a chosen destination starts the move, shown
// step by step with the copy's progress until it is done or reverted.
import { api, showError, showNote, clearBanner, short } from '../api.js';
import { money, mb, period } from '../format.js';
import { el, fill } from '../dom.js';
import { field, onSubmit, int, text } from '../forms.js';

// What each step of the agent (market/agent.go) means to the buyer.
const steps = {
  lease: 'Asking the destination to hold capacity for the VM…',
  begin: 'Suspending the VM at its provider, if it runs…',
  copy: 'Copying the VM’s files to the destination…',
  finish: 'The destination verified and committed the VM; telling the old provider…',
  commit: 'Moving the lease in the ledger…',
  resume: 'Starting the VM again at the destination…',
  done: 'Done: the VM is at its new provider.',
  revert: 'The migration failed: putting the VM back as it was…',
  reverted: 'The migration failed and was undone: the VM is where it was, as it was.',
};
const ended = (m) => m.step === 'done' || m.step === 'reverted';

export async function render(main, [id]) {
  const progress = el('section', { id: 'migration', hidden: true });
  const where = el('div', { id: 'current' });
  const list = el('div', { id: 'destination-list' });
  const f = el('form', { id: 'usage-form', class: 'grid' },
    field('Days stored', 'days', '30', { kind: 'int' }),
    field('Hours running per day', 'hours', '8', { kind: 'money', hint: '0 to 24' }),
    el('div', { class: 'actions wide' }, el('button', { type: 'submit' }, 'Compare')));
  main.replaceChildren(
    el('h1', {}, `Migrate ${short(id)}`),
    el('p', {}, el('a', { href: '#/computers' }, '← My computers')),
    progress, where,
    el('h2', {}, 'Where it can go'),
    el('p', { class: 'note' }, 'Costs are for the usage below. A running VM is suspended, moved and started again; a stopped one stays stopped. It stays where it is until the destination has verified every byte.'),
    f, list);

  let timer = null;
  let closed = false;
  // While a migration this page started is under way, the last migration of the VM before it
  // (the node remembers ended ones for a while) is not shown as if it were the new one.
  let posting = false;
  let before = null;
  const latest = async () => {
    try {
      const m = await migrationOf(id);
      return !m || (before && m.started === before) ? null : m;
    } catch (err) {
      showError(err);
      return null;
    }
  };
  const poll = () => {
    if (closed) return;
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const m = await latest();
      if (m) show(progress, id, m);
      if (m && ended(m) && !posting) return;
      poll();
    }, 500);
  };

  const destinations = async () => {
    const days = text(f, 'days');
    const hours = text(f, 'hours');
    const q = new URLSearchParams();
    if (days) q.set('days', days);
    if (hours) q.set('hours', hours);
    const d = await api('GET', `/api/v1/market/vms/${encodeURIComponent(id)}/destinations?${q}`);
    where.replaceChildren(el('h2', {}, 'Where it is'), currentView(d));
    list.replaceChildren(table(d, migrate));
  };
  const migrate = async (m, method) => {
    for (const b of list.querySelectorAll('button')) b.disabled = true;
    clearBanner();
    before = (await latest())?.started ?? null;
    posting = true;
    show(progress, id, { step: 'lease', done: 0, total: 0, to: m.provider });
    poll();
    let failed = null;
    try {
      await api('POST', `/api/v1/market/vms/${encodeURIComponent(id)}/migrate`, { provider: m.provider, machine: m.machine, method: method || undefined });
    } catch (err) {
      failed = err;
    }
    // The answer comes when the migration has ended: show how it ended.
    posting = false;
    clearTimeout(timer);
    const end = await latest();
    if (end) {
      show(progress, id, end);
      if (!ended(end)) poll();
      else if (end.step === 'done') showNote(`VM ${short(id)} moved to ${short(end.to)}.`);
    } else {
      progress.hidden = true; // it never started: the banner says why
    }
    if (failed) showError(failed);
    for (const b of list.querySelectorAll('button')) b.disabled = false;
    destinations().catch(showError);
  };
  onSubmit(f, destinations);

  // A migration already under way is shown, not started again.
  try {
    const m = await migrationOf(id);
    if (m && !ended(m)) {
      show(progress, id, m);
      poll();
    }
  } catch (err) {
    showError(err);
  }
  try {
    await destinations();
  } catch (err) {
    if (err.code === 'not_found') list.replaceChildren(el('p', { class: 'empty' }, `You have no VM ${short(id)}: `, el('a', { href: '#/computers' }, 'see my computers'), '.'));
    showError(err);
  }
  return () => {
    closed = true;
    clearTimeout(timer);
  };
}

// migrationOf answers the VM's newest migration, under way or lately ended, null if none:
// from the list (newest first, with the copy's live progress), where no migration is no 404.
async function migrationOf(id) {
  const all = await api('GET', '/api/v1/market/migrations');
  return all.find((m) => m.vm === id) || null;
}

// show draws migration m in box: the progress of the copy, the step, and how it ended.
function show(box, id, m) {
  box.hidden = false;
  const pct = m.step === 'done' ? 100 : m.total > 0 ? Math.min(100, Math.floor((m.done / m.total) * 100)) : 0;
  let line = steps[m.step] || `Step ${m.step}…`;
  if (m.step === 'copy' && m.total > 0) line += ` ${mb(Math.round(m.done / 1048576))} of ${mb(Math.round(m.total / 1048576))}${m.dest_step ? ` (${m.dest_step})` : ''}`;
  const bar = el('progress', { id: 'migration-progress', max: '100' });
  bar.value = pct;
  box.className = `migration ${m.step}`;
  fill(box,
    el('h2', {}, m.to ? `Moving to ${short(m.to)}` : 'Moving'),
    el('div', { class: 'progress-line' }, bar, el('span', { id: 'migration-percent' }, `${pct}%`)),
    el('p', { id: 'migration-state', 'data-step': m.step }, line),
    m.waiting ? el('p', { class: 'warn' }, `Waiting: ${m.waiting}`) : null,
    m.step === 'reverted' || m.step === 'revert' ? el('p', { class: 'field-error', id: 'migration-error' }, m.error ? `Why: ${m.error}` : 'The destination did not finish.') : null,
    m.step === 'done' ? el('p', { class: 'actions' },
      el('a', { class: 'button', id: 'migration-console', href: `#/console/${encodeURIComponent(id)}` }, 'Open its console'),
      el('a', { class: 'button', href: '#/computers' }, 'Back to my computers')) : null,
    m.step === 'reverted' ? el('p', {}, el('a', { href: '#/computers' }, 'Back to my computers')) : null);
}

function currentView(d) {
  const c = d.current;
  if (!c || !c.provider) return el('p', { class: 'empty' }, 'Its provider’s offer is not in this node’s book now.');
  return el('dl', { class: 'facts', 'data-provider': c.provider, 'data-machine': c.machine },
    el('dt', {}, 'Provider'), el('dd', { class: 'id', title: c.provider }, short(c.provider)),
    el('dt', {}, 'Machine'), el('dd', {}, c.name),
    el('dt', {}, `Costs for ${d.usage.days} days`), el('dd', {}, `${money(c.cost.storage)} storage + ${money(c.cost.running)} running = `, el('strong', { 'data-field': 'total' }, money(c.cost.total))));
}

function table(d, migrate) {
  if (!d.matches.length) {
    return el('p', { class: 'empty' }, 'No other provider can host this VM now (free capacity, processor, its OS image). Look again later: new offers appear as they arrive.');
  }
  const here = d.current?.cost?.total;
  return el('div', { class: 'scroll' }, el('table', { id: 'destinations', class: 'cards' },
    el('thead', {}, el('tr', {}, ['Provider', 'Machine', 'Storage', 'Running', 'Total', 'Prices', 'Network', 'Method', ''].map((h) => el('th', {}, h)))),
    el('tbody', {}, d.matches.map((m) => {
      const method = el('select', { name: 'method', 'aria-label': 'Transfer method' },
        (m.methods || []).map((x) => el('option', { value: x }, x === 'blockdiff' ? 'blockdiff (changed blocks)' : x === 'full' ? 'full copy' : x)));
      const diff = here === undefined ? '' : m.cost.total - here;
      return el('tr', { 'data-provider': m.provider, 'data-machine': m.machine },
        el('td', { class: 'id', 'data-label': 'Provider', title: m.provider }, short(m.provider)),
        el('td', { 'data-label': 'Machine' }, m.name),
        el('td', { class: 'num', 'data-label': 'Storage', 'data-field': 'storage' }, money(m.cost.storage)),
        el('td', { class: 'num', 'data-label': 'Running', 'data-field': 'running' }, money(m.cost.running)),
        el('td', { class: 'num', 'data-label': 'Total', 'data-field': 'total' }, el('strong', {}, money(m.cost.total)),
          diff !== '' ? el('div', { class: diff < 0 ? 'ok' : 'note' }, diff < 0 ? `${money(-diff)} less` : diff > 0 ? `${money(diff)} more` : 'the same') : null),
        el('td', { 'data-label': 'Prices' }, `${money(m.quote.storage_price)} per ${period(m.quote.storage_period)} stored`, el('br'),
          `${money(m.quote.running_price)} per ${period(m.quote.running_period)} running`),
        el('td', { 'data-label': 'Network' }, `${m.network_mbps} Mbit/s`),
        el('td', { 'data-label': 'Method' }, method),
        el('td', { 'data-label': '' }, el('button', { 'data-action': 'migrate', onclick: () => migrate(m, method.value) }, 'Move here')));
    }))));
}
