// @ts-check
/**
 * The meeting room through its UI, against a real confab server:
 * - two people: the microphone toggle (button and M key) shows the muted indicator on the
 *   other side; the camera turned off shows initials; a screen share (Chromium's fake
 *   capture) appears on the other side as a tile of its own, spotlighted, and goes when it
 *   stops; a microphone switched mid-call needs no renegotiation; pin, full screen, the
 *   participants list, the connection-quality detail and the copied room link;
 * - a video file played into the room arrives as a share (when ffmpeg can make one);
 * - four people at desktop and phone sizes: screenshots saved as artifacts
 *   (room-desktop.png, room-phone.png, …), and the phone never scrolls sideways.
 *
 * Needs the server binary (CONFAB_BIN) and Chromium (CHROMIUM_BIN). Artifacts go to
 * tests/browser/artifacts/.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
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
/** @typedef {import('playwright-core').Page} Page */

const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true };
const DESKTOP = { viewport: { width: 1280, height: 800 } };

/** Injected before the page's scripts: counts the `publish` offers the page sends. */
function countPublishOffers() {
  /** @type {any} */ (window).__publishOffers = 0;
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (typeof data === 'string' && data.startsWith('{"type":"publish"')) {
      /** @type {any} */ (window).__publishOffers += 1;
    }
    return send.call(this, data);
  };
}

/**
 * A tile as the page shows it: `[data-participant]` for cameras, `[data-screen]` for shares.
 * @param {Page} page
 * @param {string} selector
 */
function tile(page, selector) {
  return page.evaluate((selector) => {
    const el = document.querySelector(selector);
    const video = el?.querySelector('video');
    const avatar = el?.querySelector('.avatar');
    const visible = (/** @type {Element | null | undefined} */ e) => e?.checkVisibility({ visibilityProperty: true }) ?? false;
    return {
      present: el instanceof HTMLElement,
      classes: el instanceof HTMLElement ? el.className : '',
      width: video?.videoWidth ?? 0,
      height: video?.videoHeight ?? 0,
      currentTime: video?.currentTime ?? 0,
      videoVisible: visible(video),
      avatar: visible(avatar) ? avatar?.textContent ?? '' : null,
      micOff: visible(el?.querySelector('[aria-label="Microphone off"]')),
      camOff: visible(el?.querySelector('[aria-label="Camera off"]')),
      label: el?.querySelector('.label')?.textContent ?? null,
    };
  }, selector);
}

/**
 * Waits until a tile's video plays and advances.
 * @param {Person} person
 * @param {string} selector
 * @param {string} what
 */
async function waitPlaying(person, selector, what) {
  const first = await waitFor(`${person.name} to play ${what}`, async () => {
    const s = await tile(person.page, selector);
    return { ok: s.width > 0 && s.currentTime > 0 && s.videoVisible, value: s };
  });
  await waitFor(`${what} to advance at ${person.name}`, async () => {
    const s = await tile(person.page, selector);
    return { ok: s.currentTime > first.currentTime, value: { first, now: s } };
  });
  return first;
}

/**
 * Whether the page can be scrolled sideways (it must not on a phone).
 * @param {Page} page
 */
function horizontalOverflow(page) {
  return page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    innerWidth: window.innerWidth,
  }));
}

/**
 * @param {Page} page
 * @param {string} label
 */
async function assertNoSideways(page, label) {
  const o = await horizontalOverflow(page);
  assert.ok(o.scrollWidth <= o.innerWidth && o.bodyScrollWidth <= o.innerWidth, `${label}: ${JSON.stringify(o)}`);
}

/**
 * Joins through the prejoin form and returns the participant id.
 * @param {Person} person
 */
async function join(person) {
  await person.page.getByLabel('Your name').fill(person.name);
  await person.page.getByRole('button', { name: 'Join' }).click();
  return participantId(person);
}

/**
 * @param {string} name
 * @param {(t: import('node:test').TestContext, env: {url: string, room: string, people: Person[], browser: import('playwright-core').Browser}) => Promise<void>} body
 */
function withServer(name, body) {
  return async (/** @type {import('node:test').TestContext} */ t) => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-room-'));
    const server = await startServer({ dataDir, logFile: artifact(`room-${name}-server.log`) });
    /** @type {import('playwright-core').Browser | null} */
    let browser = null;
    /** @type {Person[]} */
    const people = [];
    let failed = true;
    try {
      browser = await launchChromium();
      const room = `ui-${Math.random().toString(36).slice(2, 10)}`;
      await body(t, { url: server.url, room, people, browser });
      failed = false;
    } finally {
      for (const person of people) await saveDiagnostics(person, `room-${name}-${person.name}`);
      await closeBrowser(browser);
      await server.stop();
      if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
      rmSync(dataDir, { recursive: true, force: true });
    }
  };
}

test(
  'two people: muted indicator, camera off, screen share tile, device switch, pin, participants, quality, link',
  { timeout: 240_000 },
  withServer('two', async (t, { url, room, people, browser }) => {
    const alice = await openPerson(browser, 'Alice', `${url}/r/${room}`, [], DESKTOP);
    const bob = await openPerson(browser, 'Bob', `${url}/r/${room}`, [countPublishOffers]);
    people.push(alice, bob);
    // Granting replaces every permission of the context: keep the camera and microphone.
    await alice.page.context().grantPermissions(['clipboard-read', 'clipboard-write', 'camera', 'microphone']);
    const aliceId = await join(alice);
    const bobId = await join(bob);
    const bobCam = `[data-participant="${bobId}"]`;
    await waitPlaying(alice, bobCam, "Bob's camera");
    await waitPlaying(bob, `[data-participant="${aliceId}"]`, "Alice's camera");

    // Bob mutes with the M key; Alice sees the muted indicator; the button shows it too.
    const bobMic = bob.page.getByRole('button', { name: 'Microphone', exact: true });
    assert.equal(await bobMic.getAttribute('aria-keyshortcuts'), 'M');
    assert.match((await bob.page.locator('#tip-mic').textContent()) ?? '', /M$/, 'the tooltip names the key');
    await bob.page.locator('body').press('m');
    await waitFor('Bob\'s microphone button to say off', async () => {
      const pressed = await bobMic.getAttribute('aria-pressed');
      return { ok: pressed === 'false', value: pressed };
    });
    await waitFor("Alice to see Bob's muted indicator", async () => {
      const s = await tile(alice.page, bobCam);
      return { ok: s.micOff, value: s };
    });
    await bobMic.click();
    await waitFor("Alice to see Bob's microphone on again", async () => {
      const s = await tile(alice.page, bobCam);
      return { ok: !s.micOff, value: s };
    });

    // Camera off with V: Alice sees Bob's initials instead of his picture; on again: video.
    await bob.page.locator('body').press('v');
    await waitFor("Alice to see Bob's placeholder", async () => {
      const s = await tile(alice.page, bobCam);
      return { ok: s.avatar === 'B' && !s.videoVisible && s.camOff, value: s };
    });
    await bob.page.getByRole('button', { name: 'Camera', exact: true }).click();
    await waitPlaying(alice, bobCam, "Bob's camera again");

    // Bob switches microphones mid-call: the new device is sent without a new offer.
    const offersBefore = await bob.page.evaluate(() => /** @type {any} */ (window).__publishOffers);
    const labelBefore = await bob.page.evaluate(() => /** @type {any} */ (window).confab.tracks.get('microphone')?.label);
    await bob.page.getByRole('button', { name: 'More' }).click();
    await bob.page.getByRole('button', { name: 'Devices' }).click();
    const dialog = bob.page.getByRole('dialog', { name: 'Devices' });
    await dialog.getByLabel('Microphone').selectOption({ index: 2 });
    const switched = await waitFor('Bob to send the other microphone', async () => {
      const label = await bob.page.evaluate(() => {
        const c = /** @type {any} */ (window).confab;
        const sender = c.senders.get('microphone');
        return sender?.track?.label ?? null;
      });
      return { ok: label !== null && label !== labelBefore, value: label };
    });
    await dialog.getByRole('button', { name: 'Done' }).click();
    assert.equal(await bob.page.evaluate(() => /** @type {any} */ (window).__publishOffers), offersBefore, 'no renegotiation');
    t.diagnostic(`microphone switched from ${labelBefore} to ${switched} with ${offersBefore} offers in all`);

    // Screen share: a tile of its own on Alice's side, in the spotlight, gone when it stops.
    const share = bob.page.getByRole('button', { name: 'Share screen' });
    await share.click();
    await waitFor('the Share screen toggle to say on', async () => {
      const pressed = await share.getAttribute('aria-pressed');
      return { ok: pressed === 'true', value: pressed };
    });
    const screen = `[data-screen="${bobId}"]`;
    const shown = await waitPlaying(alice, screen, "Bob's screen");
    assert.match(shown.classes, /\bmain\b/, 'a share comes into the spotlight');
    assert.equal(shown.label, 'Bob (screen)');
    await waitPlaying(alice, bobCam, "Bob's camera beside his screen");
    assert.equal(await alice.page.locator('[data-participant]').count(), 2, 'still one camera tile each');
    await bob.page.locator(`[data-screen="${bobId}"] video`).waitFor();
    await alice.page.screenshot({ path: artifact('room-two-share.png') });
    await share.click();
    await waitFor("Bob's screen tile to go at Alice", async () => {
      const s = await tile(alice.page, screen);
      return { ok: !s.present, value: s };
    });

    // Pin Bob's camera, then full screen, then back.
    const pin = alice.page.getByRole('button', { name: 'Pin Bob', exact: true });
    await pin.click();
    assert.equal(await pin.getAttribute('aria-pressed'), 'true');
    assert.match((await tile(alice.page, bobCam)).classes, /\bmain\b/);
    await alice.page.getByRole('button', { name: 'Show Bob full screen' }).click();
    await waitFor("Bob's tile to fill the screen", async () => {
      const which = await alice.page.evaluate(() => /** @type {HTMLElement | null} */ (document.fullscreenElement)?.dataset.participant ?? null);
      return { ok: which === bobId, value: which };
    });
    await alice.page.evaluate(() => document.exitFullscreen());
    await pin.click();
    assert.equal(await pin.getAttribute('aria-pressed'), 'false');

    // The participants list.
    await alice.page.getByRole('button', { name: /^Participants/ }).click();
    const list = alice.page.locator('#people-list');
    await list.getByText('Bob').waitFor();
    assert.match((await list.textContent()) ?? '', /Alice \(you\)/);

    // Connection quality of Bob's tile: numbers from getStats.
    const quality = alice.page.getByRole('button', { name: /^Connection of Bob(:|$)/ });
    await waitFor("the quality of Bob's tile to be measured", async () => {
      const name = await quality.getAttribute('aria-label');
      return { ok: /: (good|fair|poor)$/.test(name ?? ''), value: name };
    });
    await quality.click();
    const detail = alice.page.getByRole('group', { name: 'Connection details' }).first();
    await waitFor('the quality detail to show a bitrate and a resolution', async () => {
      const text = (await detail.textContent()) ?? '';
      return { ok: /\d+ kbit\/s/.test(text) && /\d+×\d+/.test(text) && /\d+ ms/.test(text), value: text };
    });
    t.diagnostic(`quality detail: ${await detail.textContent()}`);
    await alice.page.screenshot({ path: artifact('room-two-quality.png') });
    // Nothing above touched Alice's own camera and microphone.
    for (const name of ['Microphone', 'Camera']) {
      assert.equal(await alice.page.getByRole('button', { name, exact: true }).getAttribute('aria-pressed'), 'true', name);
    }

    // The room link goes to the clipboard.
    await alice.page.getByRole('button', { name: 'Copy link' }).click();
    await alice.page.getByText('Link copied').waitFor();
    assert.equal(await alice.page.evaluate(() => navigator.clipboard.readText()), `${url}/r/${room}`);
  }),
);

test(
  'a video file played into the room arrives as a share',
  { timeout: 180_000 },
  withServer('file', async (t, { url, room, people, browser }) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'confab-file-'));
    const file = path.join(dir, 'clip.webm');
    const made = spawnSync(process.env.FFMPEG_BIN ?? 'ffmpeg', [
      '-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=25',
      '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000', '-t', '4',
      '-c:v', 'libvpx', '-b:v', '600k', '-c:a', 'libopus', file,
    ]);
    if (made.status !== 0) {
      t.skip(`ffmpeg could not make a test video: ${made.error ?? made.stderr}`);
      return;
    }
    try {
      const alice = await openPerson(browser, 'Alice', `${url}/r/${room}`);
      const bob = await openPerson(browser, 'Bob', `${url}/r/${room}`);
      people.push(alice, bob);
      await join(alice);
      const bobId = await join(bob);
      await bob.page.getByRole('button', { name: 'More' }).click();
      const chooser = bob.page.waitForEvent('filechooser');
      await bob.page.getByRole('button', { name: 'Play a video file' }).click();
      await (await chooser).setFiles({ name: 'clip.webm', mimeType: 'video/webm', buffer: readFileSync(file) });
      const s = await waitPlaying(alice, `[data-screen="${bobId}"]`, "Bob's video file");
      // The file's picture (640×360), possibly scaled down while the bandwidth estimate grows.
      assert.ok(Math.abs(s.width / s.height - 16 / 9) < 0.02 && s.width <= 640, `${s.width}×${s.height}`);
      await waitFor("the file's sound to reach Alice", async () => {
        const audio = await alice.page.evaluate(async () => {
          let packets = 0;
          (await /** @type {any} */ (window).confab.subscribePc.getStats()).forEach((/** @type {any} */ x) => {
            if (x.type === 'inbound-rtp' && x.kind === 'audio') packets += x.packetsReceived;
          });
          return packets;
        });
        return { ok: audio > 0, value: audio };
      });
      await alice.page.screenshot({ path: artifact('room-file.png') });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }),
);

test(
  'four people at desktop and phone sizes: screenshots, and the phone never scrolls sideways',
  { timeout: 300_000 },
  withServer('four', async (t, { url, room, people, browser }) => {
    const alice = await openPerson(browser, 'Alice Archer', `${url}/r/${room}`, [], DESKTOP);
    const bob = await openPerson(browser, 'Bob Baker', `${url}/r/${room}`);
    const carol = await openPerson(browser, 'Carol', `${url}/r/${room}`);
    const dan = await openPerson(browser, 'Dan', `${url}/r/${room}`, [], PHONE);
    people.push(alice, bob, carol, dan);

    await dan.page.waitForFunction(() => /** @type {HTMLVideoElement | null} */ (document.querySelector('#preview'))?.videoWidth);
    await assertNoSideways(dan.page, 'phone prejoin');
    await dan.page.screenshot({ path: artifact('prejoin-phone.png') });
    await alice.page.screenshot({ path: artifact('prejoin-desktop.png') });

    const ids = [];
    for (const p of people) ids.push(await join(p));
    for (const p of [alice, dan]) {
      for (const id of ids) {
        if (id === (await participantId(p))) continue;
        await waitPlaying(p, `[data-participant="${id}"]`, `${id}'s camera`);
      }
    }
    // Bob speaks (Chromium's fake microphone beeps), Carol is muted.
    await carol.page.getByRole('button', { name: 'Microphone', exact: true }).click();
    await waitFor("Carol's muted indicator at Alice", async () => {
      const s = await tile(alice.page, `[data-participant="${ids[2]}"]`);
      return { ok: s.micOff, value: s };
    });
    await assertNoSideways(dan.page, 'phone room');
    await alice.page.screenshot({ path: artifact('room-desktop.png') });
    await dan.page.screenshot({ path: artifact('room-phone.png') });

    // Every tile fits the phone's stage: nothing outside the viewport.
    const outside = await dan.page.evaluate(() =>
      [...document.querySelectorAll('.tile')]
        .map((el) => el.getBoundingClientRect())
        .filter((r) => r.left < 0 || r.right > window.innerWidth + 0.5 || r.top < 0 || r.bottom > window.innerHeight + 0.5)
        .map((r) => JSON.stringify(r)),
    );
    assert.deepEqual(outside, [], 'tiles outside the phone screen');

    // The phone's conversation and participants list cover the tiles, still without sideways scroll.
    await dan.page.getByRole('button', { name: 'Chat' }).click();
    await dan.page.getByLabel('Message').fill('Hello from my phone');
    await dan.page.getByRole('button', { name: 'Send' }).click();
    await alice.page.getByRole('log').getByText('Hello from my phone').waitFor();
    await assertNoSideways(dan.page, 'phone chat');
    await dan.page.screenshot({ path: artifact('room-phone-chat.png') });
    await dan.page.getByRole('button', { name: /^Participants/ }).click();
    await assertNoSideways(dan.page, 'phone participants');
    await dan.page.screenshot({ path: artifact('room-phone-people.png') });
    await dan.page.getByRole('button', { name: 'Hide list' }).click();

    // Bob shares his screen: spotlighted on both.
    await bob.page.getByRole('button', { name: 'Share screen' }).click();
    for (const p of [alice, dan]) await waitPlaying(p, `[data-screen="${ids[1]}"]`, "Bob's screen");
    await assertNoSideways(dan.page, 'phone share');
    await alice.page.screenshot({ path: artifact('room-desktop-share.png') });
    await dan.page.screenshot({ path: artifact('room-phone-share.png') });
    t.diagnostic('screenshots: room-desktop.png room-phone.png room-phone-chat.png room-desktop-share.png room-phone-share.png');
  }),
);
