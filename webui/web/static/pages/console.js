// The console of a running VM in the page: noVNC over a websocket on this node, bridged to the
// console tunnel to the provider, with the one-time VNC password of the session. When the tunnel
// drops it asks for a new session and reconnects (and again whenever the VM starts running
// again); while the VM migrates (a running VM is suspended at its old provider first) it waits,
// and reconnects to the VM where it arrived.
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
  let migrating = false;
  let timer = null;
  const waitForMigration = () => {
    migrating = true;
    state.textContent = 'waiting for the migration';
    showNote('The VM is moving to another provider: the console reconnects when it has arrived.');
  };
  // One session request at a time: every request makes the provider set a new one-time
  // password, so a second one in flight would void the first's before its viewer logs in. A
  // request asked for meanwhile runs after it, if the console is still not connected.
  let pending = null;
  let again = false;
  const connect = () => {
    if (pending) {
      again = true;
      return pending;
    }
    pending = attempt().finally(() => {
      pending = null;
      const rerun = again && !rfb && !closed;
      again = false;
      if (rerun) connect();
    });
    return pending;
  };
  const attempt = async () => {
    if (closed || rfb) return;
    let t;
    try {
      t = await api('POST', `/ui/console/${encodeURIComponent(id)}`);
    } catch (err) {
      state.textContent = 'not connected';
      if (migrating || (err.code === 'illegal_action' && /migrating/.test(err.message))) {
        waitForMigration();
      } else {
        showError(err);
      }
      return;
    }
    if (closed || rfb) return;
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
      screen.dataset.connects = String(Number(screen.dataset.connects || 0) + 1);
      rfb.focus();
    });
    rfb.addEventListener('disconnect', () => {
      screen.dataset.connected = 'false';
      rfb = null;
      if (closed) return;
      if (migrating) {
        waitForMigration();
        return;
      }
      state.textContent = 'disconnected';
      if (retries++ < 3) {
        timer = setTimeout(connect, 1000 * retries);
      } else {
        showNote('The console disconnected. Is the VM still running? Reload the page to try again.');
      }
    });
    rfb.addEventListener('securityfailure', (ev) => showNote(`The console refused the session: ${ev.detail.reason || 'wrong password'}.`));
  };
  const stop = await follow(`vm=${encodeURIComponent(id)}`, (rec) => {
    // A VM that runs again (resumed, started) after the console gave up is reached anew.
    if (rec.kind === 'vm.changed' && rec.data?.state?.status === 'started' && !rfb && !migrating) {
      retries = 0;
      clearTimeout(timer);
      connect();
      return;
    }
    if (rec.kind !== 'migration.step') return;
    const step = rec.data?.step; // the record's data is the migration (market.Migration)
    if (step === 'done' || step === 'reverted') {
      // Done: the VM is reached through a new session at its new provider; reverted: at its
      // old one again.
      migrating = false;
      retries = 0;
      clearTimeout(timer);
      if (rfb) rfb.disconnect();
      else connect();
    } else if (step) {
      migrating = true;
    }
  });
  await connect();
  return () => {
    closed = true;
    clearTimeout(timer);
    stop();
    if (rfb) rfb.disconnect();
  };
}
