// My computers: the buyer's VMs, wherever they are, each with the actions its status allows
// (report §6.1.7) as buttons, kept live from the node's event stream.
import { api, follow, showError, showNote, clearBanner, short } from '../api.js';
import { el } from '../dom.js';

// The buttons of the actions, by the API's action names.
const buttons = {
  startmachine: { verb: 'start', label: 'Start' },
  stopmachine: { verb: 'stop', label: 'Stop' },
  suspendmachine: { verb: 'suspend', label: 'Suspend' },
  resumemachine: { verb: 'resume', label: 'Resume' },
  deletemachine: { verb: 'rm', label: 'Delete', confirm: 'Delete this VM and its disk for good?' },
};
// Actions that open a page rather than act at once.
const links = {
  viewmachine: { label: 'Console', href: (id) => `#/console/${id}` },
  migrate: { label: 'Migrate', href: (id) => `#/migrate/${id}` },
};

export async function render(main) {
  const list = el('div', { id: 'vms' });
  main.replaceChildren(el('h1', {}, 'My computers'), list,
    el('p', { class: 'more' }, el('a', { href: '#/configs' }, 'Add a computer'), ' · ', el('a', { href: '#/accounts' }, 'What they cost')));
  let busy = false;
  let again = false;
  const refresh = async () => {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      draw(list, await api('GET', '/api/v1/market/vms'), act);
    } catch (err) {
      showError(err);
    } finally {
      busy = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  };
  const act = async (v, action, button) => {
    const b = buttons[action];
    if (b.confirm && button.dataset.confirming !== 'yes') {
      button.dataset.confirming = 'yes';
      button.textContent = 'Really delete?';
      return;
    }
    for (const x of list.querySelectorAll(`[data-vm="${v.id}"] button`)) x.disabled = true;
    clearBanner();
    showNote(`${b.label}: asking the provider…`);
    try {
      const out = await api('POST', `/api/v1/market/vms/${encodeURIComponent(v.id)}/${b.verb}`);
      showNote(`${b.label}: the VM is ${out.state ? out.state.status : 'done'}.`);
    } catch (err) {
      showError(err);
    }
    refresh();
  };
  await refresh();
  return await follow('', (rec) => {
    if (/^(vm|lease|migration)\./.test(rec.kind)) refresh();
  });
}

function draw(list, vms, act) {
  if (vms.length === 0) {
    list.replaceChildren(el('div', { class: 'empty' },
      el('p', {}, 'You have no computers yet. ', el('a', { href: '#/configs', 'data-action': 'browse' }, 'Pick a configuration'),
        ', search the providers that can host it, and store it on one.'),
      el('p', { class: 'note' }, 'From a terminal: ', el('code', {}, 'virtuoso search --config NAME'), ' then ', el('code', {}, 'virtuoso store'), '.')));
    return;
  }
  list.replaceChildren(el('div', { class: 'scroll' }, el('table', { class: 'cards' },
    el('thead', {}, el('tr', {}, ['VM', 'Configuration', 'Provider', 'Status', 'Actions'].map((h) => el('th', {}, h)))),
    el('tbody', {}, vms.map((v) => el('tr', { 'data-vm': v.id, 'data-status': v.state.status },
      el('td', { class: 'id', 'data-label': 'VM', title: v.id }, short(v.id)),
      el('td', { 'data-label': 'Configuration' }, v.config.name),
      el('td', { class: 'id', 'data-label': 'Provider', title: v.provider }, short(v.provider)),
      el('td', { 'data-label': 'Status' }, el('span', { class: `status ${v.state.status}` }, v.state.status),
        v.health ? el('div', { class: 'warn' }, v.health) : null,
        v.note ? el('div', { class: 'note' }, v.note) : null),
      el('td', { class: 'actions', 'data-label': 'Actions' }, (v.actions || []).map((a) => {
        if (links[a]) return el('a', { class: 'button', href: links[a].href(v.id), 'data-action': a }, links[a].label);
        if (!buttons[a]) return null;
        return el('button', { 'data-action': a, onclick: (ev) => act(v, a, ev.currentTarget) }, buttons[a].label);
      }))))))));
}
