// My machines (report §5.2.2–5.2.3: addmachineprovider, editmachineprovider,
// deletemachineprovider): the provider's physical machines with their terms and the VMs
// stored on each; a form to add one (blank, measured from this host, or copied from another
// machine); each one's terms edited in place. Capacity and processor are locked once added.
import { api, follow, showError, showNote, clearBanner, short } from '../api.js';
import { money, mb, period, when } from '../format.js';
import { el } from '../dom.js';
import { field, select, checks, onSubmit, showFieldErrors, text, int, amount, ticked } from '../forms.js';

const methods = [['blockdiff', 'blockdiff (changed blocks only)'], ['full', 'full copy']];

export async function render(main) {
  // A node that does not sell answers not_provider; asking its identity first spares the
  // browser's console an error for a page that is as it should be.
  const id = await api('GET', '/api/v1/id');
  let machines;
  try {
    if (!id.provider) throw Object.assign(new Error('not a provider'), { code: 'not_provider' });
    machines = await api('GET', '/api/v1/market/machines');
  } catch (err) {
    if (err.code !== 'not_provider') throw err;
    main.replaceChildren(el('h1', {}, 'My machines'),
      el('div', { class: 'empty', id: 'not-provider' },
        el('p', {}, 'This node does not sell machines. To become a provider, run the node on a machine with a hypervisor (QEMU/KVM) with ',
          el('code', {}, 'virtuoso node --provider'), ' (or set ', el('code', {}, 'roles.provider = true'), ' in its config.toml), then come back here to add the machine and set its prices.'),
        el('p', {}, 'Meanwhile ', el('a', { href: '#/market' }, 'the marketplace'), ' shows what providers ask.')));
    return;
  }
  const [defaults, leases] = await Promise.all([
    api('GET', '/api/v1/market/machines/defaults').catch(() => null),
    api('GET', '/api/v1/market/leases'),
  ]);
  const list = el('div', { id: 'machines' });
  const adder = el('section', { id: 'add-machine' });
  main.replaceChildren(el('h1', {}, 'My machines'), list, adder);

  const reload = async () => {
    const [ms, ls] = await Promise.all([api('GET', '/api/v1/market/machines'), api('GET', '/api/v1/market/leases')]);
    machines = ms;
    drawList(ms, ls);
    adder.replaceChildren(addForm(ms, defaults, reload));
  };
  // The VMs and free capacity follow the event log; the forms are drawn again only when a
  // machine is added or removed, so that nothing half-typed is lost.
  const drawList = (ms, ls) => {
    if (!ms.length) {
      list.replaceChildren(el('p', { class: 'empty' }, 'You have no machines on the market yet. Add this one below: its capacity is measured from the host; set the chunks you sell in and a price per chunk, and buyers see its offer within seconds.'));
      return;
    }
    const have = new Set(ms.map((m) => m.id));
    const shown = [...list.querySelectorAll('section.machine')].map((s) => s.dataset.machine);
    if (shown.length !== ms.length || shown.some((id) => !have.has(id))) {
      list.replaceChildren(...ms.map((m) => machineView(m, reload)));
    }
    for (const m of ms) {
      const s = list.querySelector(`section.machine[data-machine="${m.id}"]`);
      s.querySelector('.free').replaceChildren(freeView(m));
      s.querySelector('.vms').replaceChildren(vmsView(ls.filter((l) => l.lease.machine === m.id)));
    }
  };
  drawList(machines, leases);
  adder.replaceChildren(addForm(machines, defaults, reload));
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      const [ms, ls] = await Promise.all([api('GET', '/api/v1/market/machines'), api('GET', '/api/v1/market/leases')]);
      machines = ms;
      drawList(ms, ls);
    } catch (err) {
      showError(err);
    } finally {
      busy = false;
    }
  };
  return await follow('', (rec) => {
    if (/^(vm|lease|machine)\./.test(rec.kind)) refresh();
  });
}

// termsFields are the inputs of a machine's terms, filled from t.
function termsFields(t = {}, placeholder = false) {
  const ph = (v) => (placeholder ? { placeholder: 'default' } : {});
  const m = (v) => (v === undefined ? '' : money(v));
  return [
    field('Speed chunk (bogomips)', 'terms.speed_unit', t.speed_unit, { kind: 'int', ...ph() }),
    field('Price per speed chunk', 'terms.speed_price', m(t.speed_price), { kind: 'money', hint: 'per running period', ...ph() }),
    field('Memory chunk (MB)', 'terms.memory_unit', t.memory_unit, { kind: 'int', ...ph() }),
    field('Price per memory chunk', 'terms.memory_price', m(t.memory_price), { kind: 'money', hint: 'per running period', ...ph() }),
    field('Storage chunk (MB)', 'terms.storage_unit', t.storage_unit, { kind: 'int', ...ph() }),
    field('Price per storage chunk', 'terms.storage_price', m(t.storage_price), { kind: 'money', hint: 'per storage period', ...ph() }),
    field('Running period (seconds)', 'terms.running_period', t.running_period, { kind: 'int', ...ph() }),
    field('Storage period (seconds)', 'terms.storage_period', t.storage_period, { kind: 'int', ...ph() }),
  ];
}

// readTerms is the Terms the form says.
function readTerms(f) {
  return {
    speed_unit: int(f, 'terms.speed_unit'), memory_unit: int(f, 'terms.memory_unit'), storage_unit: int(f, 'terms.storage_unit'),
    speed_price: amount(f, 'terms.speed_price'), memory_price: amount(f, 'terms.memory_price'), storage_price: amount(f, 'terms.storage_price'),
    running_period: int(f, 'terms.running_period'), storage_period: int(f, 'terms.storage_period'),
  };
}

function setValue(f, name, v) {
  const i = f.querySelector(`[name="${CSS.escape(name)}"]`);
  if (i) i.value = v ?? '';
}

// addForm adds a machine: capacity measured from this host (defaults), or a copy of another.
function addForm(machines, defaults, added) {
  const cap = defaults || {};
  const f = el('form', { id: 'machine-add', class: 'grid' },
    machines.length ? select('Start from an existing machine', 'copy_from', [['', '— a new machine —'], ...machines.map((m) => [m.id, m.name])], '') : null,
    field('Name', 'name', '', { placeholder: 'e.g. rack-3' }),
    field('Processor', 'processor', '', { placeholder: 'x86_64' }),
    field('Speed (bogomips)', 'capacity.speed_bogomips', cap.speed_bogomips, { kind: 'int', hint: defaults ? 'measured on this host' : 'how fast it is' }),
    field('Memory (MB)', 'capacity.memory_mb', cap.memory_mb, { kind: 'int', hint: defaults ? 'measured on this host' : '' }),
    field('Storage (MB)', 'capacity.storage_mb', cap.storage_mb, { kind: 'int', hint: defaults ? 'free on this host' : '' }),
    field('Network (Mbit/s)', 'network_mbps', '', { kind: 'int', placeholder: 'default' }),
    el('fieldset', { class: 'wide grid' }, el('legend', {}, 'Terms: what you sell in, and the price per chunk (empty: the defaults)'), termsFields({}, true)),
    checks('Migration methods it accepts', 'methods', methods, ['blockdiff', 'full']),
    el('p', { class: 'note wide' }, 'Capacity and processor are locked once the machine is added (report §5.2.3); prices and chunks can change later and never change existing leases.'),
    el('div', { class: 'actions wide' }, el('button', { type: 'submit' }, 'Add machine')));
  const from = f.querySelector('select[name=copy_from]');
  if (from) {
    from.addEventListener('change', () => {
      const m = machines.find((x) => x.id === from.value);
      if (!m) return;
      setValue(f, 'name', `${m.name} (copy)`);
      setValue(f, 'processor', m.processor);
      for (const k of ['speed_bogomips', 'memory_mb', 'storage_mb']) setValue(f, `capacity.${k}`, m.capacity[k]);
      setValue(f, 'network_mbps', m.network_mbps);
      for (const k of ['speed_unit', 'memory_unit', 'storage_unit', 'running_period', 'storage_period']) setValue(f, `terms.${k}`, m.terms[k]);
      for (const k of ['speed_price', 'memory_price', 'storage_price']) setValue(f, `terms.${k}`, money(m.terms[k]));
      for (const c of f.querySelectorAll('input[name=methods]')) c.checked = m.methods.includes(c.value);
    });
  }
  onSubmit(f, async () => {
    const body = {
      copy_from: text(f, 'copy_from') || undefined,
      name: text(f, 'name') || undefined,
      processor: text(f, 'processor') || undefined,
      capacity: { speed_bogomips: int(f, 'capacity.speed_bogomips'), memory_mb: int(f, 'capacity.memory_mb'), storage_mb: int(f, 'capacity.storage_mb') },
      terms: readTerms(f),
      network_mbps: int(f, 'network_mbps'),
      methods: ticked(f, 'methods'),
    };
    const m = await api('POST', '/api/v1/market/machines', body);
    await added();
    showNote(`Added machine “${m.name}”: its offer is on the market.`);
  });
  return el('div', {}, el('h2', {}, 'Add a machine'), f);
}

function machineView(m, reload) {
  const edit = el('form', { class: 'machine-edit grid', 'data-machine': m.id },
    field('Name', 'name', m.name),
    field('Network (Mbit/s)', 'network_mbps', m.network_mbps, { kind: 'int' }),
    el('fieldset', { class: 'wide grid locked', disabled: true },
      el('legend', {}, 'Locked once added'),
      field('Processor', 'processor', m.processor, { disabled: true }),
      field('Speed (bogomips)', 'capacity.speed_bogomips', m.capacity.speed_bogomips, { disabled: true }),
      field('Memory (MB)', 'capacity.memory_mb', m.capacity.memory_mb, { disabled: true }),
      field('Storage (MB)', 'capacity.storage_mb', m.capacity.storage_mb, { disabled: true }),
      el('p', { class: 'note wide' }, 'Capacity and processor cannot change once a machine is added (report §5.2.3): to sell other amounts, add a new machine, starting from this one.')),
    el('fieldset', { class: 'wide grid' }, el('legend', {}, 'Terms (new leases only; existing ones keep theirs)'), termsFields(m.terms)),
    checks('Migration methods it accepts', 'methods', methods, m.methods || []),
    el('div', { class: 'actions wide' }, el('button', { type: 'submit' }, 'Save changes')));
  onSubmit(edit, async () => {
    const out = await api('POST', `/api/v1/market/machines/${m.id}`, {
      name: text(edit, 'name'), terms: readTerms(edit), network_mbps: int(edit, 'network_mbps'), methods: ticked(edit, 'methods'),
    });
    showNote(`Saved “${out.name}”: its offer now carries the new terms.`);
    summary.replaceChildren(termsSummary(out));
  });
  const summary = el('p', { class: 'terms' }, termsSummary(m));
  const del = el('button', { 'data-action': 'delete-machine', class: 'danger' }, 'Remove machine');
  const delNote = el('div', { class: 'delete-note' });
  const remove = async (force) => {
    clearBanner();
    try {
      await api('POST', `/api/v1/market/machines/${m.id}/delete${force ? '?force=true' : ''}`);
      showNote(`Removed machine “${m.name}”: its offer is withdrawn.`);
      await reload();
    } catch (err) {
      del.dataset.confirming = '';
      del.textContent = 'Remove machine';
      if (err.code === 'machine_in_use' && !force) {
        showError(err);
        delNote.replaceChildren(el('p', { class: 'warn' }, err.message),
          el('button', { 'data-action': 'force-delete-machine', class: 'danger', onclick: () => remove(true) }, 'Remove it anyway: stop and delete its VMs'));
        return;
      }
      showError(err);
    }
  };
  del.addEventListener('click', () => {
    if (del.dataset.confirming !== 'yes') {
      del.dataset.confirming = 'yes';
      del.textContent = 'Really remove?';
      return;
    }
    remove(false);
  });
  return el('section', { class: 'machine', 'data-machine': m.id },
    el('h2', {}, m.name, ' ', el('span', { class: 'id note', title: m.id }, short(m.id))),
    summary,
    el('div', { class: 'free' }),
    el('h3', {}, 'VMs stored on it'),
    el('div', { class: 'vms' }),
    el('h3', {}, 'Edit'),
    edit,
    el('div', { class: 'actions' }, del), delNote);
}

function termsSummary(m) {
  const t = m.terms;
  return `${money(t.speed_price)} per ${t.speed_unit} bogomips and ${money(t.memory_price)} per ${mb(t.memory_unit)} of memory per ${period(t.running_period)} running; ` +
    `${money(t.storage_price)} per ${mb(t.storage_unit)} per ${period(t.storage_period)} stored · ${m.network_mbps} Mbit/s · ${(m.methods || []).join(', ')}`;
}

function freeView(m) {
  return el('p', { class: 'note' }, `Free: ${m.free.speed_bogomips} of ${m.capacity.speed_bogomips} bogomips, ${mb(m.free.memory_mb)} of ${mb(m.capacity.memory_mb)} memory, ${mb(m.free.storage_mb)} of ${mb(m.capacity.storage_mb)} storage · ${m.vms} VM${m.vms === 1 ? '' : 's'}`);
}

function vmsView(leases) {
  if (!leases.length) return el('p', { class: 'empty' }, 'No VM is stored on it yet: buyers find it in their searches.');
  return el('div', { class: 'scroll' }, el('table', { class: 'cards' },
    el('thead', {}, el('tr', {}, ['VM', 'Configuration', 'Buyer', 'Status', 'Lease', 'Since'].map((h) => el('th', {}, h)))),
    el('tbody', {}, leases.map((l) => {
      // An ended lease's VM is no longer here: its last status would mislead.
      const st = l.state === 'ended' ? 'ended' : l.vm_state?.status || l.state;
      return el('tr', { 'data-vm': l.lease.vm, 'data-status': st, 'data-lease': l.lease.id },
        el('td', { class: 'id', 'data-label': 'VM', title: l.lease.vm }, short(l.lease.vm)),
        el('td', { 'data-label': 'Configuration' }, l.lease.config.name),
        el('td', { class: 'id', 'data-label': 'Buyer', title: l.lease.buyer }, short(l.lease.buyer)),
        el('td', { 'data-label': 'Status' }, el('span', { class: `status ${st}` }, st || '—')),
        el('td', { 'data-label': 'Lease' }, l.state, l.reason ? el('div', { class: 'note' }, l.reason) : null),
        el('td', { 'data-label': 'Since' }, when(l.lease.created)));
    }))));
}
