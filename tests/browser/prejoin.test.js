// @ts-check
/**
 * The landing page and the prejoin view, through the UI against a real confab server:
 * the landing page suggests a room name and remembers visited rooms; the prejoin view shows
 * the camera preview, a working microphone level meter and device pickers, remembers the
 * name, and joins with the microphone off; a person whose camera and microphone are blocked
 * (or missing) is told so clearly and still joins as a viewer, seeing and hearing the others,
 * who see the viewer's initials.
 *
 * Needs the server binary (CONFAB_BIN) and Chromium (CHROMIUM_BIN). Artifacts go to
 * tests/browser/artifacts/prejoin-*.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  artifact,
  closeBrowser,
  launchChromium,
  openPerson,
  participantId,
  saveDiagnostics,
  waitFor,
} from './browser.js';
import { startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

/** Injected before the page's scripts: the browser refuses the camera and microphone. */
function blockedMedia() {
  const md = navigator.mediaDevices;
  md.getUserMedia = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
  md.enumerateDevices = async () => [];
}

/** Injected before the page's scripts: a computer without camera or microphone. */
function noDevices() {
  const md = navigator.mediaDevices;
  md.getUserMedia = () => Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));
  md.enumerateDevices = async () => [];
}

/**
 * A remote participant's tile as the page shows it.
 * @param {import('playwright-core').Page} page
 * @param {string} id
 */
function tileState(page, id) {
  return page.evaluate((id) => {
    const tile = document.querySelector(`[data-participant="${CSS.escape(id)}"]`);
    const video = tile?.querySelector('video');
    const avatar = tile?.querySelector('.avatar');
    return {
      present: tile instanceof HTMLElement,
      video: tile instanceof HTMLElement ? tile.dataset.video : null,
      width: video?.videoWidth ?? 0,
      currentTime: video?.currentTime ?? 0,
      avatar: avatar instanceof HTMLElement && avatar.checkVisibility() ? avatar.textContent : null,
      micOff: tile?.querySelector('[aria-label="Microphone off"]')?.checkVisibility() ?? false,
    };
  }, id);
}

/**
 * @param {string} name
 * @param {(t: import('node:test').TestContext, env: {url: string, room: string, people: Person[], browser: import('playwright-core').Browser}) => Promise<void>} body
 */
function withServer(name, body) {
  return async (/** @type {import('node:test').TestContext} */ t) => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-prejoin-'));
    const server = await startServer({ dataDir, logFile: artifact(`prejoin-${name}-server.log`) });
    /** @type {import('playwright-core').Browser | null} */
    let browser = null;
    /** @type {Person[]} */
    const people = [];
    let failed = true;
    try {
      browser = await launchChromium();
      const room = `pre-${Math.random().toString(36).slice(2, 10)}`;
      await body(t, { url: server.url, room, people, browser });
      failed = false;
    } finally {
      for (const person of people) await saveDiagnostics(person, `prejoin-${name}-${person.name}`);
      await closeBrowser(browser);
      await server.stop();
      if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
      rmSync(dataDir, { recursive: true, force: true });
    }
  };
}

test(
  'landing and prejoin: suggested room, preview, level meter, devices, remembered name, join muted',
  { timeout: 180_000 },
  withServer('devices', async (t, { url, room, people, browser }) => {
    const zoe = await openPerson(browser, 'Zoe', `${url}/`);
    people.push(zoe);
    const { page } = zoe;

    // Landing: a suggested name in the room alphabet; a bad one is explained, not submitted.
    const roomBox = page.getByLabel('Room name');
    assert.match(await roomBox.inputValue(), /^[a-z]+-[a-z]+-\d{1,2}$/);
    await roomBox.fill('not a room');
    await page.getByRole('button', { name: 'Go' }).click();
    await page.getByText('Use only letters, digits').waitFor();
    assert.equal(new URL(page.url()).pathname, '/');
    await page.getByRole('button', { name: 'Suggest another name' }).click();
    await roomBox.fill(room);
    await page.getByRole('button', { name: 'Go' }).click();
    await page.waitForURL(`${url}/r/${room}`);

    // Prejoin: the preview plays the camera, mirrored; the pickers list the fake devices.
    await page.waitForFunction(() => /** @type {HTMLVideoElement | null} */ (document.querySelector('#preview'))?.videoWidth);
    assert.equal(await page.locator('#preview').evaluate((v) => getComputedStyle(v).transform !== 'none'), true, 'mirrored');
    const cameras = await page.getByRole('combobox', { name: 'Camera' }).locator('option').allTextContents();
    const mics = await page.getByRole('combobox', { name: 'Microphone' }).locator('option').allTextContents();
    t.diagnostic(`cameras ${JSON.stringify(cameras)}, microphones ${JSON.stringify(mics)}`);
    assert.ok(cameras.length >= 1 && !cameras.includes('No camera found'), JSON.stringify(cameras));
    assert.ok(mics.length >= 2, JSON.stringify(mics));
    // Another microphone: the meter follows the new one (Chromium's fake microphone beeps).
    await page.getByRole('combobox', { name: 'Microphone' }).selectOption({ index: 1 });
    await page.getByLabel('Your name').click(); // a gesture lets the audio meter start
    const meter = page.getByRole('meter', { name: 'Microphone level' });
    await waitFor('the level meter to move', async () => {
      const now = Number(await meter.getAttribute('aria-valuenow'));
      return { ok: now > 0, value: now };
    });
    assert.deepEqual(await page.locator('#media-problems li').allTextContents(), [], 'no problems reported');
    assert.match((await page.locator('#room-count').textContent()) ?? '', /nobody is here yet/);

    // Join with the microphone off.
    await page.getByLabel('Your name').fill('Zoe');
    const preMic = page.getByRole('button', { name: 'Microphone', exact: true });
    await preMic.click();
    assert.equal(await preMic.getAttribute('aria-pressed'), 'false');
    await page.getByRole('button', { name: 'Join' }).click();
    const id = await participantId(zoe);
    const mic = page.getByRole('button', { name: 'Microphone', exact: true });
    assert.equal(await mic.getAttribute('aria-pressed'), 'false', 'still muted in the room');
    assert.equal(await page.getByRole('button', { name: 'Camera', exact: true }).getAttribute('aria-pressed'), 'true');
    await waitFor('the server to list Zoe as muted with her camera on', async () => {
      const r = await fetch(`${url}/api/rooms/${room}`);
      const body = r.ok ? await r.json() : null;
      const me = body?.participants?.find((/** @type {any} */ p) => p.id === id);
      return { ok: me?.audio === false && me?.video === true && me?.tracks?.length === 2, value: body };
    });
    assert.equal((await tileState(page, id)).micOff, true, 'her own tile shows the muted microphone');

    // Leave; the name and the room are remembered.
    await page.getByRole('button', { name: 'Leave' }).click();
    await page.getByText('You left the meeting.').waitFor();
    await page.goto(`${url}/r/${room}`);
    assert.equal(await page.getByLabel('Your name').inputValue(), 'Zoe');
    await page.goto(`${url}/`);
    const recent = page.getByRole('region', { name: 'Recent rooms' }).getByRole('link', { name: room });
    assert.equal(await recent.getAttribute('href'), `/r/${room}`);
    await page.getByRole('button', { name: `Forget ${room}` }).click();
    assert.equal(await page.getByRole('region', { name: 'Recent rooms' }).count(), 0, 'forgotten');
  }),
);

test(
  'blocked or missing camera and microphone: a clear message, and the viewer still joins',
  { timeout: 180_000 },
  withServer('viewer', async (t, { url, room, people, browser }) => {
    const alice = await openPerson(browser, 'Alice', `${url}/r/${room}`);
    const viewer = await openPerson(browser, 'Victor', `${url}/r/${room}`, [blockedMedia]);
    const nodev = await openPerson(browser, 'Nadia', `${url}/r/${room}`, [noDevices]);
    people.push(alice, viewer, nodev);

    // Told what happened and what to do.
    const problems = viewer.page.locator('#media-problems');
    await problems.getByText('access is blocked').first().waitFor();
    const text = (await problems.textContent()) ?? '';
    assert.match(text, /site settings/);
    assert.match(text, /join as a viewer/);
    const missing = (await nodev.page.locator('#media-problems').textContent({ timeout: 10_000 })) ?? '';
    await nodev.page.locator('#media-problems').getByText('No camera found').waitFor();
    t.diagnostic(`blocked: ${text} | missing: ${missing}`);
    await viewer.page.screenshot({ path: artifact('prejoin-blocked.png') });

    await alice.page.getByLabel('Your name').fill('Alice');
    await alice.page.getByRole('button', { name: 'Join' }).click();
    const aliceId = await participantId(alice);
    await viewer.page.getByLabel('Your name').fill('Victor Viewer');
    await viewer.page.getByRole('button', { name: 'Join' }).click();
    const viewerId = await participantId(viewer);

    // The viewer sees and hears Alice.
    await waitFor("the viewer to play Alice's video", async () => {
      const s = await tileState(viewer.page, aliceId);
      return { ok: s.width > 0 && s.currentTime > 0, value: s };
    });
    await waitFor("the viewer to receive Alice's audio", async () => {
      const n = await viewer.page.evaluate(async () => {
        let packets = 0;
        (await /** @type {any} */ (window).confab.subscribePc.getStats()).forEach((/** @type {any} */ s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'audio') packets += s.packetsReceived;
        });
        return packets;
      });
      return { ok: n > 0, value: n };
    });
    // Alice sees the viewer's initials, muted, camera off.
    const seen = await waitFor("Alice to show the viewer's placeholder", async () => {
      const s = await tileState(alice.page, viewerId);
      return { ok: s.present && s.video === 'false' && s.avatar === 'VV' && s.micOff, value: s };
    });
    t.diagnostic(`viewer tile at Alice: ${JSON.stringify(seen)}`);
    // The viewer's own controls say there is nothing on.
    for (const name of ['Microphone', 'Camera']) {
      assert.equal(await viewer.page.getByRole('button', { name, exact: true }).getAttribute('aria-pressed'), 'false');
    }
    await alice.page.screenshot({ path: artifact('prejoin-viewer-seen.png') });

    // The viewer can still share a screen: Alice gets it as a screen tile, not as a camera.
    await viewer.page.getByRole('button', { name: 'Share screen' }).click();
    const shared = await waitFor("Alice to play the viewer's screen", async () => {
      const s = await alice.page.evaluate((id) => {
        const video = document.querySelector(`[data-screen="${CSS.escape(id)}"] video`);
        return video instanceof HTMLVideoElement ? { width: video.videoWidth, time: video.currentTime } : null;
      }, viewerId);
      return { ok: s !== null && s.width > 0 && s.time > 0, value: s };
    });
    const camera = await tileState(alice.page, viewerId);
    assert.equal(camera.video, 'false', 'the camera tile still shows the placeholder');
    assert.equal(camera.avatar, 'VV');
    t.diagnostic(`viewer's screen at Alice: ${JSON.stringify(shared)}`);
  }),
);
