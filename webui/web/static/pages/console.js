// The console of a running VM in the page: noVNC over a websocket on this node, bridged to the
// console tunnel to the provider, with the one-time VNC password of the session. When the VM
// moves or the tunnel drops, it asks for a new session and reconnects.
import { api, currentSession, follow, showError, showNote, clearBanner, short } from '../api.js';
import { el } from '../dom.js';

export async function render(main, [id]) {
  const screen = el('div', { id: 'screen', class: 'screen' });
  const state = el('span', { id: 'console-state' }, 'connecting…');
  main.replaceChildren(
    el('h1', {}, `Console of ${short(id)}`),
    el('p', {}, el('a', { href: '#/computers' }, '← My computers'), ' · ', state),
    screen);
  if (!currentSession().packages) {
    state.textContent = 'unavailable';
    showNote('This binary was built without the front-end packages (noVNC): run `make build`, which installs them, and restart the node.');
    return;
  }
  const { default: RFB } = await import('/vendor/novnc/core/rfb.js');
  let rfb = null;
  let closed = false;
  let retries = 0;
  const connect = async () => {
    if (closed) return;
    let t;
    try {
      t = await api('POST', `/ui/console/${encodeURIComponent(id)}`);
    } catch (err) {
      state.textContent = 'not connected';
      showError(err);
      return;
    }
    clearBanner();
    rfb = new RFB(screen, `ws://${location.host}/ui/console/${t.ticket}/ws`, {
      credentials: { password: t.password }, wsProtocols: ['binary'],
    });
    rfb.scaleViewport = true;
    rfb.focusOnClick = true;
    rfb.addEventListener('connect', () => {
      retries = 0;
      state.textContent = 'connected';
      screen.dataset.connected = 'true';
      rfb.focus();
    });
    rfb.addEventListener('disconnect', (ev) => {
      screen.dataset.connected = 'false';
      rfb = null;
      if (closed) return;
      state.textContent = 'disconnected';
      if (retries++ < 3) {
        setTimeout(connect, 1000 * retries);
      } else {
        showNote('The console disconnected. Is the VM still running? Reload the page to try again.');
      }
    });
    rfb.addEventListener('securityfailure', (ev) => showNote(`The console refused the session: ${ev.detail.reason || 'wrong password'}.`));
  };
  const stop = await follow(`vm=${encodeURIComponent(id)}`, (rec) => {
    // A VM that moved is reached through a new session at its new provider.
    if (rec.kind === 'migration.step' && rec.data?.migration?.step === 'done' && rfb) {
      rfb.disconnect();
    }
  });
  await connect();
  return () => {
    closed = true;
    stop();
    if (rfb) rfb.disconnect();
  };
}
