// @ts-check
/**
 * A camera in a meeting: ffmpeg pushes H.264 + Opus over RTSP into a room (as an IP camera
 * or OBS would), and Chromium, joining that room through the meeting page, shows the camera's
 * tile, labelled as a camera, with its 640x360 video playing.
 *
 * Needs the server binary (CONFAB_BIN, default target/debug/confab), Chromium (CHROMIUM_BIN,
 * default /usr/bin/chromium) and ffmpeg. Artifacts go to tests/browser/artifacts/camera-*.
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
import { spawnFfmpeg, startServer } from './server.js';

/**
 * The server's RTSP address (`127.0.0.1:PORT`): from server.js's `addresses()` where it has
 * one, else from the `rtsp listening on rtsp://…` line the server prints at start, next to
 * the HTTP line on which server.js resolves.
 * @param {import('./server.js').RunningServer} server
 * @returns {Promise<string>}
 */
function rtspAddress(server) {
  return waitFor('the server to print its RTSP listener', async () => {
    /** @type {string | null} */
    const known = /** @type {any} */ (server).addresses?.()?.rtsp ?? null;
    const m = /rtsp listening on rtsp:\/\/([^\s/]+)/.exec(server.tail());
    const value = known ?? m?.[1] ?? null;
    return { ok: value !== null, value };
  });
}

/**
 * ffmpeg pushing its test picture (640x360, 30 fps, H.264 High without B-frames) and a sine
 * (Opus) to `url` over RTSP/TCP. Its stderr is kept for failure messages.
 * @param {string} url
 */
function pushCamera(url) {
  const args = [
    '-hide_banner', '-nostdin', '-loglevel', 'warning', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=30',
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-c:v', 'libx264', '-profile:v', 'high', '-pix_fmt', 'yuv420p', '-bf', '0', '-g', '60',
    '-tune', 'zerolatency', '-preset', 'veryfast', '-b:v', '1M',
    '-c:a', 'libopus', '-b:a', '64k',
    '-f', 'rtsp', '-rtsp_transport', 'tcp', url,
  ];
  return spawnFfmpeg(args);
}

/**
 * The camera tile as the page shows it.
 * @param {import('playwright-core').Page} page
 * @param {string} id
 */
function cameraTile(page, id) {
  return page.evaluate((id) => {
    const tile = document.querySelector(`[data-participant="${CSS.escape(id)}"]`);
    const video = tile?.querySelector('video');
    return {
      present: tile instanceof HTMLElement,
      label: tile instanceof HTMLElement ? tile.innerText : null,
      kind: tile instanceof HTMLElement ? (tile.dataset.kind ?? null) : null,
      width: video?.videoWidth ?? 0,
      height: video?.videoHeight ?? 0,
      currentTime: video?.currentTime ?? 0,
      paused: video?.paused ?? true,
      visible: video?.checkVisibility({ visibilityProperty: true }) ?? false,
    };
  }, id);
}

test('a camera pushed over RTSP shows as a playing camera tile', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-browser-camera-'));
  const server = await startServer({ dataDir, logFile: artifact('camera-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person | null} */
  let person = null;
  /** @type {ReturnType<typeof pushCamera> | null} */
  let camera = null;
  let failed = true;
  try {
    const room = `cam-${Math.random().toString(36).slice(2, 10)}`;
    const rtsp = await rtspAddress(server);
    camera = pushCamera(`rtsp://${rtsp}/${room}/cam`);
    const cam = camera;

    // The camera is in the room before anyone opens the page.
    await waitFor('the camera to be listed in the room', async () => {
      if (!cam.running()) throw new Error(`ffmpeg stopped pushing: ${cam.describe()}`);
      const r = await fetch(`${server.url}/api/rooms/${room}`);
      const body = r.ok ? await r.json() : null;
      const p = body?.participants?.find((/** @type {any} */ x) => x.id === 'cam');
      return { ok: p?.kind === 'camera', value: { status: r.status, body } };
    });

    browser = await launchChromium();
    person = await openPerson(browser, 'Dana', `${server.url}/r/${room}`);
    const { page } = person;
    await page.getByLabel('Your name').fill('Dana');
    await page.getByRole('button', { name: 'Join' }).click();
    await participantId(person);

    const playing = await waitFor('the camera tile to play 640x360 video', async () => {
      if (!cam.running()) throw new Error(`ffmpeg stopped pushing: ${cam.describe()}`);
      const v = await cameraTile(page, 'cam');
      const ok = v.width === 640 && v.height === 360 && v.currentTime > 0 && !v.paused && v.visible;
      return { ok, value: v };
    });
    await waitFor('the camera video to advance', async () => {
      const v = await cameraTile(page, 'cam');
      return { ok: v.currentTime > playing.currentTime + 0.5, value: { before: playing, now: v } };
    });

    // Marked as a camera: its label says so (web/room.js: "{name} (camera)").
    const label = page.locator('[data-participant="cam"] .label');
    await label.waitFor();
    const text = (await label.innerText()).trim();
    assert.equal(text, 'cam (camera)', `camera tile label: ${JSON.stringify(text)}`);
    assert.ok(await label.isVisible(), 'the camera label is visible');
    const tile = await cameraTile(page, 'cam');
    if (tile.kind !== null) assert.equal(tile.kind, 'camera', 'data-kind of the camera tile');
    t.diagnostic(`camera tile: ${JSON.stringify(tile)}`);
    await page.screenshot({ path: artifact('camera.png') });

    // The camera goes away: its tile goes too.
    await cam.stop();
    await waitFor('the camera tile to go after ffmpeg stopped', async () => {
      const n = await page.locator('[data-participant="cam"]').count();
      return { ok: n === 0, value: { tiles: n } };
    });
    failed = false;
  } finally {
    if (person) await saveDiagnostics(person, 'camera');
    await closeBrowser(browser);
    if (failed && camera) console.error(camera.describe());
    await camera?.stop();
    const exit = await server.stop();
    if (exit !== 0) t.diagnostic(`server exit after SIGTERM: ${exit}`);
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});
