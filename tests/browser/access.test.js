// @ts-check
/**
 * Access control in the meeting page, against a real confab server with a configuration file:
 * - a token-only room: no token is refused; a viewer's token joins without capturing anything
 *   (no getUserMedia at all, media buttons disabled, no publish connection) and still sees the
 *   presenter's video and chats; the token leaves the address bar and fixes the name;
 * - a password room: the Password box appears when needed, a wrong password is refused, the
 *   right one admits;
 * - an operator mutes a presenter, locks the room (a newcomer is refused), removes the
 *   presenter (who is told why and does not come back), unlocks, and ends the meeting for
 *   everyone;
 * - the landing and room pages run under the server's strict Content-Security-Policy without
 *   a single violation or console error.
 *
 * Needs the server binary (CONFAB_BIN) and Chromium (CHROMIUM_BIN). Artifacts go to
 * tests/browser/artifacts/access-*.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  artifact,
  closeBrowser,
  launchChromium,
  openPerson,
  participantId,
  saveDiagnostics,
  tileState,
  videoPlays,
  waitFor,
} from './browser.js';
import { joinToken, passwordHash, startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

const PASSWORD = 'correct horse battery';

/** @type {string} */
let dataDir;
/** @type {import('./server.js').RunningServer} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-access-'));
  const hash = await passwordHash(PASSWORD, dataDir);
  const config = path.join(dataDir, 'confab.toml');
  writeFileSync(
    config,
    ['[[room]]', 'name = "invite"', 'require_token = true', '', '[[room]]', 'name = "secret"', `password_hash = "${hash}"`, ''].join('\n'),
  );
  server = await startServer({ dataDir, logFile: artifact('access-server.log'), config });
  browser = await launchChromium();
});

after(async () => {
  await closeBrowser(browser);
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/**
 * Injected before the page's scripts: counts every request for a camera, microphone or screen,
 * and records Content-Security-Policy violations.
 */
function captureProbe() {
  /** @type {any} */
  const w = window;
  w.__capture = 0;
  w.__csp = [];
  const md = navigator.mediaDevices;
  if (md) {
    for (const name of /** @type {const} */ (['getUserMedia', 'getDisplayMedia'])) {
      const original = md[name]?.bind(md);
      if (!original) continue;
      /** @type {any} */ (md)[name] = (/** @type {any} */ c) => {
        w.__capture += 1;
        return original(c);
      };
    }
  }
  document.addEventListener('securitypolicyviolation', (e) => {
    w.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
  });
}

/** Injected before the page's scripts: counts the signaling connections the page opens. */
function socketCounter() {
  /** @type {any} */ (window).__sockets = 0;
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    /** @param {ConstructorParameters<typeof WebSocket>} args */
    constructor(...args) {
      super(...args);
      /** @type {any} */ (window).__sockets += 1;
    }
  };
}

/**
 * Opens a page with the probe, recording diagnostics on failure.
 * @param {string} name
 * @param {string} url
 * @param {Person[]} people  the test's pages, for diagnostics
 * @param {Array<() => void>} [scripts]  more scripts to run before the page's
 */
async function open(name, url, people, scripts = []) {
  const person = await openPerson(browser, name, url, [captureProbe, ...scripts]);
  people.push(person);
  return person;
}

/** @param {Person} person */
async function clickJoin(person) {
  await person.page.getByRole('button', { name: 'Join' }).click();
}

/** @param {Person} person */
function joinError(person) {
  return person.page.locator('#join-error').textContent();
}

/**
 * The ended view's title and reason once it shows.
 * @param {Person} person
 */
function endedView(person) {
  return waitFor(`${person.name}'s meeting to end`, async () => {
    const v = await person.page.evaluate(() => ({
      shown: !(/** @type {HTMLElement} */ (document.getElementById('ended')).hidden),
      title: document.getElementById('ended-title')?.textContent ?? '',
      reason: document.getElementById('ended-reason')?.textContent ?? '',
      rejoin: !(/** @type {HTMLElement} */ (document.getElementById('rejoin')).hidden),
    }));
    return { ok: v.shown, value: v };
  });
}

/**
 * The toast's text once it contains `text`.
 * @param {Person} person
 * @param {string} text
 */
function notice(person, text) {
  return waitFor(`${person.name} to show "${text}"`, async () => {
    const shown = (await person.page.locator('#toast').textContent()) ?? '';
    return { ok: shown.includes(text), value: shown };
  });
}

/**
 * @param {Person[]} people
 * @param {string} label
 */
async function diagnose(people, label) {
  for (const p of people) await saveDiagnostics(p, `access-${label}-${p.name}`);
}

test('token-only room: refused without a token; a viewer captures nothing, watches the presenter and chats', { timeout: 120_000 }, async (t) => {
  /** @type {Person[]} */
  const people = [];
  try {
    // Without a token: the server's refusal is shown, nobody gets in.
    const stranger = await open('Stranger', `${server.url}/r/invite?name=Stranger`, people);
    await clickJoin(stranger);
    const refused = await waitFor('the refusal', async () => {
      const text = (await joinError(stranger)) ?? '';
      return { ok: text.length > 0, value: text };
    });
    assert.match(refused, /join token/);
    // A token-only room has no password to ask for.
    assert.equal(await stranger.page.getByLabel('Password').isVisible(), false);
    assert.equal(await stranger.page.evaluate(() => /** @type {any} */ (window).confab?.id ?? null), null);

    const presenterToken = await joinToken({ dataDir, room: 'invite', name: 'Pia Presenter', role: 'presenter' });
    const viewerToken = await joinToken({ dataDir, room: 'invite', name: 'Vic Viewer', role: 'viewer' });

    const pia = await open('Pia', `${server.url}/r/invite?token=${encodeURIComponent(presenterToken)}`, people);
    await clickJoin(pia);
    const piaId = await participantId(pia);

    const vic = await open('Vic', `${server.url}/r/invite?token=${encodeURIComponent(viewerToken)}`, people);
    // The token is out of the address bar, and its name is in the (read-only) name box.
    assert.equal(new URL(vic.page.url()).search, '', `address after load: ${vic.page.url()}`);
    const nameBox = vic.page.getByLabel('Your name');
    assert.equal(await nameBox.inputValue(), 'Vic Viewer');
    assert.equal(await nameBox.isEditable(), false, 'the name a token fixes cannot be edited');
    await clickJoin(vic);
    const vicId = await participantId(vic);

    await videoPlays(vic, piaId);
    for (const name of ['Microphone', 'Camera', 'Share screen']) {
      const button = vic.page.getByRole('button', { name, exact: true });
      assert.equal(await button.isDisabled(), true, `${name} is disabled for a viewer`);
    }
    assert.equal(await vic.page.locator('#role-note').isVisible(), true, 'the viewer sees why');
    const vicState = await vic.page.evaluate(() => {
      const w = /** @type {any} */ (window);
      return { capture: w.__capture, publishPc: Boolean(w.confab?.publishPc), role: w.confab?.role, name: w.confab?.name };
    });
    assert.deepEqual(vicState, { capture: 0, publishPc: false, role: 'viewer', name: 'Vic Viewer' });
    // The presenter did capture (the probe counts): the zero above is the viewer's doing.
    assert.ok((await pia.page.evaluate(() => /** @type {any} */ (window).__capture)) > 0);

    // Everyone sees the viewer; the viewer chats.
    await waitFor('Pia to list Vic', async () => {
      const s = await tileState(pia, vicId);
      return { ok: s.present, value: s };
    });
    await vic.page.getByLabel('Message').fill('watching from the back row');
    await vic.page.getByRole('button', { name: 'Send' }).click();
    await pia.page.getByRole('log').getByText('watching from the back row').waitFor();

    // A shared file's link carries the viewer's own room token.
    await pia.page.locator('#chat-file').setInputFiles({ name: 'agenda.txt', mimeType: 'text/plain', buffer: Buffer.from('1. hello\n') });
    const link = vic.page.getByRole('log').getByRole('link', { name: /agenda\.txt/ });
    await link.waitFor();
    const href = new URL((await link.getAttribute('href')) ?? '');
    const vicUpload = await vic.page.evaluate(() => /** @type {any} */ (window).confab.uploadToken);
    assert.equal(href.searchParams.get('token'), vicUpload);
    const download = await vic.page.evaluate(async (u) => {
      const r = await fetch(u);
      return { status: r.status, body: await r.text() };
    }, href.href);
    assert.deepEqual(download, { status: 200, body: '1. hello\n' });
    t.diagnostic(`viewer joined as ${vicId}; file link ${href.pathname}?token=…`);

    // A reload of the tab keeps the invitation (not in the address, in the tab's storage).
    await vic.page.reload();
    assert.equal(await vic.page.getByLabel('Your name').inputValue(), 'Vic Viewer');
    await clickJoin(vic);
    await waitFor('Vic to be back in the room', async () => {
      const id = await vic.page.evaluate(() => /** @type {any} */ (window).confab?.id ?? null);
      return { ok: id !== null, value: id };
    });
    assert.equal(await vic.page.evaluate(() => /** @type {any} */ (window).__capture), 0);
  } catch (err) {
    await diagnose(people, 'token');
    throw err;
  } finally {
    for (const p of people) await p.page.context().close().catch(() => {});
  }
});

test('password room: the Password box appears, a wrong password is refused, the right one admits', { timeout: 90_000 }, async () => {
  /** @type {Person[]} */
  const people = [];
  try {
    const ann = await open('Ann', `${server.url}/r/secret?name=Ann`, people, [socketCounter]);
    const password = ann.page.getByLabel('Password');
    assert.equal(await password.isVisible(), false, 'no password box before the server asks');
    await clickJoin(ann);
    await password.waitFor({ state: 'visible' });
    assert.equal(await password.getAttribute('type'), 'password');
    assert.match((await joinError(ann)) ?? '', /needs its password/);

    await password.fill('not it');
    await clickJoin(ann);
    await waitFor('the wrong password to be refused', async () => {
      const text = (await joinError(ann)) ?? '';
      return { ok: /wrong password/.test(text), value: text };
    });
    assert.equal(await password.getAttribute('aria-invalid'), 'true');
    assert.equal(await ann.page.locator('#meeting').isVisible(), false);

    await password.fill(PASSWORD);
    await clickJoin(ann);
    await participantId(ann);
    await ann.page.locator('#meeting').waitFor({ state: 'visible' });

    // The connection drops: the page joins again by itself with the password it kept.
    const sockets = await ann.page.evaluate(() => {
      const w = /** @type {any} */ (window);
      w.__dropped = w.confab;
      w.confab.ws.close();
      return w.__sockets;
    });
    await waitFor('Ann to be back in the room', async () => {
      const s = await ann.page.evaluate(() => {
        const w = /** @type {any} */ (window);
        return { fresh: w.confab !== w.__dropped, id: w.confab?.id ?? null, sockets: w.__sockets };
      });
      return { ok: s.fresh && s.id !== null, value: s };
    });
    assert.ok((await ann.page.evaluate(() => /** @type {any} */ (window).__sockets)) > sockets);
    assert.equal(await ann.page.locator('#ended').isVisible(), false);
  } catch (err) {
    await diagnose(people, 'password');
    throw err;
  } finally {
    for (const p of people) await p.page.context().close().catch(() => {});
  }
});

test('operator: mutes a presenter, locks the room, removes the presenter, ends the meeting', { timeout: 180_000 }, async (t) => {
  /** @type {Person[]} */
  const people = [];
  const room = 'board';
  try {
    const opToken = await joinToken({ dataDir, room, name: 'Olga', role: 'operator' });
    const olga = await open('Olga', `${server.url}/r/${room}?token=${encodeURIComponent(opToken)}`, people);
    await clickJoin(olga);
    await participantId(olga);

    // Counts the presenter's signaling connections: a removed participant must not come back.
    const pia = await open('Pia', `${server.url}/r/${room}?name=Pia`, people, [socketCounter]);
    await clickJoin(pia);
    const piaId = await participantId(pia);

    // Only the operator has the operator's controls.
    assert.equal(await olga.page.getByRole('button', { name: 'Lock room' }).isVisible(), true);
    assert.equal(await olga.page.getByRole('button', { name: 'End meeting', exact: true }).isVisible(), true);
    await pia.page.getByRole('button', { name: /^Participants/ }).click();
    for (const name of ['Lock room', 'End meeting', 'Mute Olga', 'Stop video of Olga', 'Remove Olga']) {
      assert.equal(await pia.page.getByRole('button', { name, exact: true }).count(), 0, `Pia has no ${name}`);
    }

    // Mute: Pia's microphone goes off on her page, and Olga sees it off.
    await waitFor("Olga to see Pia's microphone on", async () => {
      const s = await tileState(olga, piaId);
      return { ok: s.present && !s.micOff, value: s };
    });
    const piaMic = pia.page.getByRole('button', { name: 'Microphone', exact: true });
    assert.equal(await piaMic.getAttribute('aria-pressed'), 'true');
    await olga.page.getByRole('button', { name: /^Participants/ }).click();
    await olga.page.getByRole('button', { name: 'Mute Pia', exact: true }).click();
    await notice(pia, 'Olga muted your microphone');
    assert.equal(await piaMic.getAttribute('aria-pressed'), 'false');
    assert.equal(await pia.page.evaluate(() => /** @type {any} */ (window).confab.publishPc.getSenders()
      .find((/** @type {RTCRtpSender} */ s) => s.track?.kind === 'audio')?.track.enabled), false, 'the microphone track is disabled');
    await waitFor("Olga to see Pia's microphone off", async () => {
      const s = await tileState(olga, piaId);
      return { ok: s.micOff, value: s };
    });
    assert.equal(await olga.page.getByRole('button', { name: 'Mute Pia', exact: true }).isDisabled(), true);

    // Stop video: the same for the camera.
    const piaCam = pia.page.getByRole('button', { name: 'Camera', exact: true });
    assert.equal(await piaCam.getAttribute('aria-pressed'), 'true');
    await olga.page.getByRole('button', { name: 'Stop video of Pia', exact: true }).click();
    await notice(pia, 'Olga turned off your camera');
    assert.equal(await piaCam.getAttribute('aria-pressed'), 'false');

    // Lock: everyone is told, and a newcomer is refused.
    const lock = olga.page.getByRole('button', { name: 'Lock room' });
    assert.equal(await lock.getAttribute('aria-pressed'), 'false');
    await lock.click();
    await notice(pia, 'Room locked by Olga');
    await waitFor('the lock button to show the lock', async () => {
      const pressed = await lock.getAttribute('aria-pressed');
      return { ok: pressed === 'true', value: pressed };
    });
    const tom = await open('Tom', `${server.url}/r/${room}?name=Tom`, people);
    await clickJoin(tom);
    const refused = await waitFor("Tom's refusal", async () => {
      const text = (await joinError(tom)) ?? '';
      return { ok: text.length > 0, value: text };
    });
    assert.match(refused, /locked/);

    // Remove: Pia's meeting ends with the reason, without a way (or an attempt) to come back.
    await olga.page.getByRole('button', { name: 'Remove Pia', exact: true }).click();
    const piaEnded = await endedView(pia);
    assert.match(piaEnded.reason, /You were removed from the room by Olga/);
    assert.equal(piaEnded.rejoin, false, 'no Rejoin after removal');
    await waitFor('Pia to leave Olga\'s page', async () => {
      const s = await tileState(olga, piaId);
      return { ok: !s.present, value: s };
    });

    // Unlock, Tom joins, then the meeting ends for everyone (after confirming).
    await lock.click();
    await notice(olga, 'Room unlocked by Olga');
    await clickJoin(tom);
    await participantId(tom);
    await olga.page.getByRole('button', { name: 'End meeting', exact: true }).click();
    const dialog = olga.page.getByRole('dialog', { name: 'End the meeting for everyone?' });
    await dialog.waitFor({ state: 'visible' });
    await dialog.getByRole('button', { name: 'End for everyone' }).click();
    for (const person of [olga, tom]) {
      const v = await endedView(person);
      assert.match(v.reason, /The meeting was ended by Olga/, `${person.name}: ${JSON.stringify(v)}`);
    }
    // Seconds have passed since the removal (the first reconnect would come after ~0.5 s).
    assert.equal(await pia.page.evaluate(() => /** @type {any} */ (window).__sockets), 1, 'Pia never reconnected');
    assert.equal((await endedView(pia)).shown, true);
    t.diagnostic('mute, lock, remove, unlock, end: all seen by the pages they concern');
  } catch (err) {
    await diagnose(people, 'operator');
    throw err;
  } finally {
    for (const p of people) await p.page.context().close().catch(() => {});
  }
});

test('strict Content-Security-Policy: no violation or console error on the landing and room pages', { timeout: 120_000 }, async () => {
  /** @type {Person[]} */
  const people = [];
  const room = 'csp-check';
  /** @param {Person} p */
  const problems = async (p) => ({
    csp: /** @type {string[]} */ (await p.page.evaluate(() => /** @type {any} */ (window).__csp)),
    errors: p.console.filter((line) => / (error|pageerror): /.test(line)),
  });
  try {
    const landing = await open('Landing', `${server.url}/`, people);
    const response = await landing.page.request.get(`${server.url}/r/${room}`);
    assert.match(response.headers()['content-security-policy'] ?? '', /script-src 'self' 'wasm-unsafe-eval'; style-src 'self'/);
    await landing.page.getByLabel('Room name').fill(room);
    // A navigation starts a new document: the landing page's findings are read before it.
    assert.deepEqual(await problems(landing), { csp: [], errors: [] }, 'landing page');
    await landing.page.getByRole('button', { name: 'Go' }).click();
    await landing.page.waitForURL(`**/r/${room}`);
    await waitFor('the preview to start', async () => {
      const status = await landing.page.locator('#preview-status').textContent();
      return { ok: status !== 'Starting camera…', value: status };
    });
    assert.deepEqual(await problems(landing), { csp: [], errors: [] }, 'room page before joining');

    // The room page with everything drawn: an operator (all controls), a presenter's tiles,
    // the people list, the chat with an image preview, the devices and end dialogs.
    const opToken = await joinToken({ dataDir, room, name: 'Olga', role: 'operator' });
    const olga = await open('Olga', `${server.url}/r/${room}?token=${encodeURIComponent(opToken)}`, people);
    await clickJoin(olga);
    await participantId(olga);
    const pia = await open('Pia', `${server.url}/r/${room}?name=Pia`, people);
    await clickJoin(pia);
    const piaId = await participantId(pia);
    await videoPlays(olga, piaId);
    await olga.page.getByRole('button', { name: /^Participants/ }).click();
    await olga.page.getByRole('button', { name: 'Mute Pia', exact: true }).waitFor();
    await olga.page.getByRole('button', { name: 'Chat' }).click();
    await pia.page.locator('#chat-file').setInputFiles({ name: 'dot.png', mimeType: 'image/png', buffer: PNG_1X1 });
    await waitFor('the image preview to load', async () => {
      const width = await olga.page.evaluate(() => /** @type {HTMLImageElement | null} */ (document.querySelector('[role="log"] img'))?.naturalWidth ?? 0);
      return { ok: width > 0, value: width };
    });
    await olga.page.getByRole('button', { name: 'End meeting', exact: true }).click();
    const dialog = olga.page.getByRole('dialog', { name: 'End the meeting for everyone?' });
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });

    // On a phone the operator's controls move into the More menu; the bar still fits.
    await olga.page.setViewportSize({ width: 390, height: 844 });
    await olga.page.getByRole('button', { name: 'More' }).click();
    for (const name of ['Lock room', 'End meeting']) {
      const visible = olga.page.getByRole('button', { name, exact: true });
      await visible.waitFor({ state: 'visible' });
      assert.equal(await visible.count(), 1, `one ${name} at phone size`);
      assert.equal(await olga.page.locator('#more-menu').getByRole('button', { name, exact: true }).isVisible(), true);
    }
    // The layout settles a frame or two after the resize and the menu opening.
    await waitFor('no sideways scrolling at phone size', async () => {
      const overflow = await olga.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      return { ok: overflow <= 0, value: `${overflow} px too wide` };
    });
    await olga.page.keyboard.press('Escape');
    await olga.page.setViewportSize({ width: 1000, height: 700 });
    await olga.page.getByRole('button', { name: 'Leave' }).click();
    await olga.page.getByText('You left the meeting.').waitFor();
    for (const p of [olga, pia]) assert.deepEqual(await problems(p), { csp: [], errors: [] }, p.name);
  } catch (err) {
    await diagnose(people, 'csp');
    throw err;
  } finally {
    for (const p of people) await p.page.context().close().catch(() => {});
  }
});

/** A 1×1 PNG. */
const PNG_1X1 = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==',
  'base64',
);

test('password room: after five wrong passwords the page passes on the "try again later" of the server', { timeout: 120_000 }, async () => {
  // A server of its own: the refusals count against 127.0.0.1, which the other tests share.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'confab-throttle-'));
  const config = path.join(dir, 'confab.toml');
  writeFileSync(config, `[[room]]\nname = "vault"\npassword_hash = "${await passwordHash(PASSWORD, dir)}"\n`);
  const own = await startServer({ dataDir: dir, logFile: artifact('access-throttle-server.log'), config });
  /** @type {Person[]} */
  const people = [];
  try {
    const eve = await open('Eve', `${own.url}/r/vault?name=Eve`, people);
    await clickJoin(eve);
    const password = eve.page.getByLabel('Password');
    await password.waitFor({ state: 'visible' });
    /** @type {string[]} */
    const seen = [];
    for (let attempt = 1; attempt <= 6; attempt++) {
      await eve.page.locator('#join-error').evaluate((el) => { el.textContent = ''; });
      await password.fill(`guess ${attempt}`);
      await clickJoin(eve);
      // The message line was emptied before the click: any text is this attempt's answer.
      const text = await waitFor(`the answer to guess ${attempt}`, async () => {
        const busy = await eve.page.getByRole('button', { name: 'Join' }).isDisabled();
        const text = (await joinError(eve)) ?? '';
        return { ok: !busy && text.length > 0, value: text };
      });
      seen.push(text);
    }
    assert.ok(seen.slice(0, 5).every((m) => /wrong password/.test(m)), JSON.stringify(seen));
    assert.match(seen[5], /too many failed attempts/);
    // Even the right password waits now.
    await password.fill(PASSWORD);
    await eve.page.locator('#join-error').evaluate((el) => { el.textContent = ''; });
    await clickJoin(eve);
    const last = await waitFor('the answer to the right password', async () => {
      const text = (await joinError(eve)) ?? '';
      return { ok: text.length > 0, value: text };
    });
    assert.match(last, /too many failed attempts/);
  } catch (err) {
    await diagnose(people, 'throttle');
    throw err;
  } finally {
    for (const p of people) await p.page.context().close().catch(() => {});
    await own.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
