// The pages' forms: labelled inputs, reading what was typed into a request body, and the
// node's answer to a bad one shown where it belongs. Forms do not check values themselves:
// they send what was typed, and the node's error names each wrong field (APIError.fields,
// keyed by the dotted JSON name of the body's field), shown under the input of that name.
import { showError, clearBanner } from './api.js';
import { parseMoney } from './format.js';
import { el } from './dom.js';

// field is a labelled input. kind is 'text' (default), 'int' or 'money' (typed as text, with
// the phone keyboard for numbers); hint is a line under it; other attrs go on the input.
export function field(label, name, value, { kind = 'text', hint, ...attrs } = {}) {
  const mode = kind === 'int' ? 'numeric' : kind === 'money' ? 'decimal' : undefined;
  const input = el('input', { type: 'text', name, id: attrs.id, inputmode: mode, autocomplete: 'off', ...attrs });
  input.value = value ?? '';
  return el('label', { class: 'field' }, el('span', {}, label), input, hint ? el('small', { class: 'hint' }, hint) : null);
}

// select is a labelled select of [value, text] options.
export function select(label, name, options, value, attrs = {}) {
  const s = el('select', { name, ...attrs }, options.map(([v, t]) => el('option', { value: v }, t)));
  if (value !== undefined) s.value = value;
  return el('label', { class: 'field' }, el('span', {}, label), s);
}

// checks is a labelled group of checkboxes named name, those in checked ticked.
export function checks(label, name, options, checked = []) {
  return el('fieldset', { class: 'field checks' }, el('legend', {}, label),
    options.map(([v, t]) => el('label', {}, el('input', { type: 'checkbox', name, value: v, checked: checked.includes(v) }), ' ', t)));
}

function input(form, name) {
  return form.querySelector(`[name="${CSS.escape(name)}"]`);
}

// text is what was typed into the input named name, trimmed.
export function text(form, name) {
  const i = input(form, name);
  return i ? i.value.trim() : '';
}

// int is the whole number typed into the input, undefined if nothing was, and the text itself
// if it is not a whole number (the node then says what the field takes).
export function int(form, name) {
  const t = text(form, name);
  if (t === '') return undefined;
  return /^[+-]?\d+$/.test(t) && Number.isSafeInteger(Number(t)) ? Number(t) : t;
}

// amount is the decimal typed into the input as micro-units, undefined if nothing was, and the
// text itself if it is not such a decimal.
export function amount(form, name) {
  const t = text(form, name);
  if (t === '') return undefined;
  const v = parseMoney(t);
  return v === null ? t : v;
}

// ticked lists the values of the ticked checkboxes named name.
export function ticked(form, name) {
  return [...form.querySelectorAll(`input[type=checkbox][name="${CSS.escape(name)}"]:checked`)].map((c) => c.value);
}

// clearFieldErrors removes the messages of the last answer from form.
export function clearFieldErrors(form) {
  for (const p of form.querySelectorAll('p.field-error')) p.remove();
  for (const i of form.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
}

// showFieldErrors shows each of err.fields under the input of its name (or of the name
// aliases gives it, for a field the form asks for in other terms) as
// <p class="field-error" data-field="KEY">, and err in the banner.
export function showFieldErrors(form, err, aliases = {}) {
  clearFieldErrors(form);
  for (const [key, msg] of Object.entries(err.fields || {})) {
    const i = input(form, aliases[key] || key);
    if (!i) continue; // the banner says it all the same
    i.setAttribute('aria-invalid', 'true');
    const at = i.closest('.field') || i;
    at.append(el('p', { class: 'field-error', 'data-field': key }, msg));
  }
  showError(err);
}

// onSubmit runs fn when the form is sent: earlier messages cleared, its submit buttons
// disabled meanwhile, and an error shown under the fields and in the banner.
export function onSubmit(form, fn, aliases) {
  form.noValidate = true;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearFieldErrors(form);
    clearBanner();
    const buttons = [...form.querySelectorAll('button[type=submit]')];
    for (const b of buttons) b.disabled = true;
    try {
      await fn(ev);
    } catch (err) {
      showFieldErrors(form, err, aliases);
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  });
  return form;
}
