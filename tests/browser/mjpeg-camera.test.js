// @ts-check
/**
 * An HTTP MJPEG camera in a meeting: ffmpeg serves its test picture as an MJPEG stream
 * (`-f mpjpeg -listen 1`, as an IP camera, mjpg-streamer or a Flask `video_feed` would), the
 * server pulls it into a room through the REST API, and Chromium, in that room, shows the
 * camera's tile with its 640x360 video playing and changing. The source dies (the camera goes
 * `retrying`) and comes back on the same port (`live` again, the picture resumes). The
 * camera's pictures also come back out as MJPEG: an `<img>` on the page shows
 * `stream.mjpeg`.
 *
 * Needs the server binary (CONFAB_BIN, default target/debug/confab), Chromium (CHROMIUM_BIN,
 * default /usr/bin/chromium) and ffmpeg. Artifacts go to tests/browser/artifacts/mjpeg-*.
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
import { freePort, spawnFfmpeg, startServer } from './server.js';

/**
 * ffmpeg serving its test picture (640x360, 10 fps) as an MJPEG stream at
 * `http://127.0.0.1:PORT/feed`, for one client.
 * @param {number} port
 */
function serveMjpeg(port) {
  const args = [
    '-hide_banner', '-nostdin', '-loglevel', 'warning', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=10',
    '-q:v', '6', '-f', 'mpjpeg', '-listen', '1', `http://127.0.0.1:${port}/feed`,
  ];
  return spawnFfmpeg(args, 'ffmpeg MJPEG server');
}

/**
 * The camera tile's video: its size, how far it has played, and a fingerprint of its current
 * picture (a 32x18 grey thumbnail drawn from the video), to see that the picture changes.
 * @param {import('playwright-core').Page} page
 * @param {string} id
 */
function cameraVideo(page, id) {
  return page.evaluate((id) => {
    const video = document.querySelector(`[data-participant="${CSS.escape(id)}"] video`);
    if (!(video instanceof HTMLVideoElement) || video.videoWidth === 0) {
      return { width: 0, height: 0, currentTime: 0, paused: true, picture: /** @type {number[]} */ ([]) };
    }
    const canvas = document.createElement('canvas');
    canvas.width = 32;
    canvas.height = 18;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx?.drawImage(video, 0, 0, 32, 18);
    const rgba = ctx?.getImageData(0, 0, 32, 18).data ?? new Uint8ClampedArray();
    const picture = [];
    for (let i = 0; i < rgba.length; i += 4) picture.push(Math.round((rgba[i] + rgba[i + 1] + rgba[i + 2]) / 3));
    return {
      width: video.videoWidth,
      height: video.videoHeight,
      currentTime: video.currentTime,
      paused: video.paused,
      picture,
    };
  }, id);
}

/** Mean absolute difference of two fingerprints. @param {number[]} a @param {number[]} b */
function difference(a, b) {
  if (a.length === 0 || a.length !== b.length) return 0;
  return a.reduce((sum, v, i) => sum + Math.abs(v - b[i]), 0) / a.length;
}

/**
 * Waits until the tile plays 640x360 video whose picture changes.
 * @param {import('playwright-core').Page} page
 * @param {string} what
 */
async function playsAndChanges(page, what) {
  const first = await waitFor(`${what}: the camera tile to play 640x360 video`, async () => {
    const v = await cameraVideo(page, 'cam');
    return { ok: v.width === 640 && v.height === 360 && v.currentTime > 0 && !v.paused, value: v };
  });
  return waitFor(`${what}: the camera's picture to change`, async () => {
    const v = await cameraVideo(page, 'cam');
    const d = difference(first.picture, v.picture);
    return { ok: v.currentTime > first.currentTime + 0.5 && d > 1, value: { difference: d, currentTime: v.currentTime } };
  });
}

/**
 * The camera's state as `GET /api/rooms/{room}/cameras` lists it.
 * @param {string} base
 * @param {string} room
 */
async function cameraState(base, room) {
  const r = await fetch(`${base}/api/rooms/${room}/cameras`);
  const list = r.ok ? await r.json() : [];
  return list.find((/** @type {any} */ c) => c.name === 'cam') ?? null;
}

test('an HTTP MJPEG camera plays in a tile and comes back after its source restarts', { timeout: 240_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-browser-mjpeg-'));
  const server = await startServer({ dataDir, logFile: artifact('mjpeg-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person | null} */
  let person = null;
  /** @type {ReturnType<typeof serveMjpeg> | null} */
  let source = null;
  let failed = true;
  try {
    const room = `mjpeg-${Math.random().toString(36).slice(2, 10)}`;
    const port = await freePort();
    source = serveMjpeg(port);
    const r = await fetch(`${server.url}/api/rooms/${room}/cameras`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'cam', url: `http://127.0.0.1:${port}/feed` }),
    });
    assert.equal(r.status, 201, `POST camera: ${r.status} ${await r.text()}`);
    await waitFor('the camera to be live', async () => {
      const c = await cameraState(server.url, room);
      return { ok: c?.state === 'live', value: c };
    });

    browser = await launchChromium();
    person = await openPerson(browser, 'Erin', `${server.url}/r/${room}`);
    const { page } = person;
    await page.getByLabel('Your name').fill('Erin');
    await page.getByRole('button', { name: 'Join' }).click();
    await participantId(person);
    const before = await playsAndChanges(page, 'at first');
    t.diagnostic(`camera tile plays: ${JSON.stringify(before)}`);
    await page.screenshot({ path: artifact('mjpeg-camera.png') });

    // The camera's pictures come back out as MJPEG, which an <img> shows.
    const img = await page.evaluate(async (src) => {
      const el = document.createElement('img');
      el.alt = 'camera stream';
      el.src = src;
      document.body.append(el);
      await new Promise((resolve, reject) => {
        el.onload = resolve;
        el.onerror = reject;
      });
      return { width: el.naturalWidth, height: el.naturalHeight };
    }, `/api/rooms/${room}/participants/cam/stream.mjpeg?width=320&fps=5`);
    assert.deepEqual(img, { width: 320, height: 180 }, 'the <img> of stream.mjpeg');
    await page.evaluate(() => document.querySelector('img[alt="camera stream"]')?.remove());

    // The source dies: the camera retries, saying why.
    await source.stop();
    const down = await waitFor('the camera to be retrying', async () => {
      const c = await cameraState(server.url, room);
      return { ok: c?.state === 'retrying' && typeof c?.error === 'string' && c.error.length > 0, value: c };
    });
    t.diagnostic(`source down: ${JSON.stringify(down)}`);

    // It comes back on the same port: live again, the tile's picture resumes.
    source = serveMjpeg(port);
    await waitFor('the camera to be live again', async () => {
      const c = await cameraState(server.url, room);
      return { ok: c?.state === 'live', value: c };
    });
    const after = await playsAndChanges(page, 'after the restart');
    t.diagnostic(`camera tile plays again: ${JSON.stringify(after)}`);
    await page.screenshot({ path: artifact('mjpeg-camera-back.png') });
    failed = false;
  } finally {
    if (person) await saveDiagnostics(person, 'mjpeg');
    await closeBrowser(browser);
    if (failed && source) console.error(source.describe());
    await source?.stop();
    const exit = await server.stop();
    if (exit !== 0) t.diagnostic(`server exit after SIGTERM: ${exit}`);
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a browser that publishes VP8 gets a clear 415 for its pictures', { timeout: 120_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-browser-vp8-'));
  const server = await startServer({ dataDir, logFile: artifact('vp8-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person | null} */
  let person = null;
  let failed = true;
  try {
    const room = `vp8-${Math.random().toString(36).slice(2, 10)}`;
    browser = await launchChromium();
    // This browser offers no H.264, so it publishes VP8 (as a browser without H.264 would).
    const noH264 = () => {
      for (const api of [RTCRtpSender, RTCRtpReceiver]) {
        const original = api.getCapabilities.bind(api);
        api.getCapabilities = (kind) => {
          const caps = original(kind);
          if (caps && kind === 'video') {
            caps.codecs = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== 'video/h264');
          }
          return caps;
        };
      }
    };
    person = await openPerson(browser, 'Vic', `${server.url}/r/${room}`, [noH264]);
    const { page } = person;
    await page.getByLabel('Your name').fill('Vic');
    await page.getByRole('button', { name: 'Join' }).click();
    const id = await participantId(person);
    const listed = await waitFor('Vic to publish VP8 video', async () => {
      const r = await fetch(`${server.url}/api/rooms/${room}`);
      const body = r.ok ? await r.json() : null;
      const me = body?.participants?.find((/** @type {any} */ p) => p.id === id);
      const video = me?.tracks?.find((/** @type {any} */ tr) => tr.kind === 'video');
      return { ok: video?.codec === 'VP8', value: me };
    });
    t.diagnostic(`published: ${JSON.stringify(listed?.tracks)}`);
    for (const route of ['frame.jpeg', 'stream.mjpeg']) {
      const r = await fetch(`${server.url}/api/rooms/${room}/participants/${id}/${route}`);
      const body = await r.json();
      assert.equal(r.status, 415, `${route}: ${r.status} ${JSON.stringify(body)}`);
      assert.match(body.error, /VP8/, `${route}: the error names the codec`);
    }
    failed = false;
  } finally {
    if (person) await saveDiagnostics(person, 'vp8');
    await closeBrowser(browser);
    const exit = await server.stop();
    if (exit !== 0) t.diagnostic(`server exit after SIGTERM: ${exit}`);
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});
