// @ts-check
/**
 * Background blur in the meeting page, with real Chromium and MediaPipe served by confab:
 * - the camera is a picture of a person in front of a brick wall (testdata/portrait.jpg fed
 *   as Chromium's fake camera), so there is fine detail behind the person for a blur to
 *   remove;
 * - how sharp a tile is: the variance of a Laplacian over the brick strips left and right of
 *   the person, computed in the page from a canvas grab of the tile's video (scaled to
 *   320x180, so the sender's resolution does not count);
 * - Alice turns **Blur background** on in the room: her tile at Bob's (the remote picture,
 *   through H.264) and her own tile lose most of that energy; off again, they get it back;
 * - Carol turns it on before joining (the prejoin button): she arrives blurred;
 * - on a phone, the toggle in the More menu works the same;
 * - the effect's own frame rate at 640x360 is logged (and must reach 10 fps here; the target
 *   on a laptop is 20);
 * - a server without the files: the buttons are disabled and say why.
 *
 * Needs the server binary built with the MediaPipe files (npm at build time), Chromium and
 * ffmpeg (to turn the picture into a y4m). Artifacts: tests/browser/artifacts/blur-*.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
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
import { REPO_ROOT, startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

/**
 * The sharpness of the brick strips of participant `id`'s tile on `person`'s page (null while
 * its video has no picture).
 * @param {Person} person
 * @param {string} id
 * @returns {Promise<number | null>}
 */
function sharpness(person, id) {
  return person.page.evaluate((id) => {
    const video = document.querySelector(`[data-participant="${CSS.escape(id)}"] video`);
    if (!(video instanceof HTMLVideoElement) || video.videoWidth === 0) return null;
    const W = 320;
    const H = 180;
    const canvas = document.createElement('canvas');
    canvas.width = W;
    canvas.height = H;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    if (!ctx) return null;
    ctx.drawImage(video, 0, 0, W, H);
    const d = ctx.getImageData(0, 0, W, H).data;
    const g = new Float32Array(W * H);
    for (let i = 0; i < W * H; i++) g[i] = 0.299 * d[4 * i] + 0.587 * d[4 * i + 1] + 0.114 * d[4 * i + 2];
    // The person stands between x = 70 and 250 (of 320): measure outside, away from the edges.
    const values = [];
    for (let y = 4; y < H - 4; y++) {
      for (const [from, to] of [[4, 62], [258, 316]]) {
        for (let x = from; x < to; x++) {
          const i = y * W + x;
          values.push(g[i - 1] + g[i + 1] + g[i - W] + g[i + W] - 4 * g[i]);
        }
      }
    }
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    return values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
  }, id);
}

/**
 * Waits until `id`'s tile at `person` is measured and `ok` says yes; returns the measurement.
 * @param {Person} person
 * @param {string} id
 * @param {string} what
 * @param {(v: number) => boolean} ok
 */
function waitSharpness(person, id, what, ok) {
  return waitFor(what, async () => {
    const v = await sharpness(person, id);
    return { ok: v !== null && ok(v), value: v };
  });
}

/**
 * Waits until the sharpness of `id`'s tile at `person` is above `floor` and has stopped rising
 * (three readings in a row within 10 % of the highest yet): the sender's bitrate ramps up over
 * its first seconds, and a baseline taken during the ramp is too low. Returns the highest.
 * @param {Person} person
 * @param {string} id
 * @param {string} what
 * @param {number} floor
 */
async function settledSharpness(person, id, what, floor) {
  let best = 0;
  let steady = 0;
  await waitFor(what, async () => {
    const v = await sharpness(person, id);
    if (v === null || v < floor) {
      steady = 0;
      return { ok: false, value: v };
    }
    steady = v >= 0.9 * best ? steady + 1 : 0;
    best = Math.max(best, v);
    return { ok: steady >= 3, value: { v, best, steady } };
  });
  return best;
}

/** @param {Person} person */
async function join(person) {
  await person.page.getByLabel('Your name').fill(person.name);
  await person.page.getByRole('button', { name: 'Join' }).click();
  return participantId(person);
}

/**
 * A y4m of the test picture for Chromium's fake camera; null without ffmpeg.
 * @param {string} dir
 */
function fakeCamera(dir) {
  const y4m = path.join(dir, 'portrait.y4m');
  const r = spawnSync(process.env.FFMPEG_BIN ?? 'ffmpeg', [
    '-v', 'error', '-y', '-i', path.join(REPO_ROOT, 'tests/browser/testdata/portrait.jpg'),
    '-frames:v', '1', '-pix_fmt', 'yuv420p', y4m,
  ]);
  return r.status === 0 ? y4m : null;
}

test('background blur: remote and own tiles lose their detail with it on, regain it off', { timeout: 300_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-blur-'));
  const y4m = fakeCamera(dataDir);
  if (!y4m) {
    t.skip('ffmpeg is needed to make the fake camera (scripts/setup.sh installs it)');
    return;
  }
  const server = await startServer({ dataDir, logFile: artifact('blur-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  try {
    const manifest = await (await fetch(`${server.url}/vendor/mediapipe/manifest.json`)).json();
    assert.equal(manifest.available, true, `this server was built without the blur files: ${manifest.reason}`);
    const license = await fetch(`${server.url}/vendor/mediapipe/LICENSE`);
    assert.match(await license.text(), /Apache License/);

    browser = await launchChromium([`--use-file-for-fake-video-capture=${y4m}`]);
    const room = 'blur';
    const alice = await openPerson(browser, 'Alice', `${server.url}/r/${room}`);
    const bob = await openPerson(browser, 'Bob', `${server.url}/r/${room}`);
    people.push(alice, bob);
    const blurButton = (/** @type {Person} */ p) => p.page.getByRole('button', { name: 'Blur background' });
    // Off by default, in the preview and the room alike.
    assert.equal(await blurButton(alice).getAttribute('aria-pressed'), 'false');
    const aliceId = await join(alice);
    await join(bob);

    // Sharp to begin with; the sender's bitrate needs a few seconds to show the bricks.
    const baseline = await settledSharpness(bob, aliceId, "Alice's tile at Bob to show the bricks, steadily", 150);
    const ownBaseline = /** @type {number} */ (await waitSharpness(alice, aliceId, 'her own tile', (v) => v > 150));
    t.diagnostic(`sharpness before: remote ${baseline.toFixed(0)}, own ${ownBaseline.toFixed(0)}`);

    await blurButton(alice).click();
    await waitFor('the blur toggle to be pressed', async () => {
      const v = await blurButton(alice).getAttribute('aria-pressed');
      return { ok: v === 'true', value: v };
    });
    const blurred = await waitSharpness(bob, aliceId, "Alice's tile at Bob to lose its detail", (v) => v < baseline * 0.2);
    const ownBlurred = await waitSharpness(alice, aliceId, 'her own tile to lose its detail', (v) => v < ownBaseline * 0.2);
    t.diagnostic(`sharpness with blur: remote ${blurred.toFixed(0)} (${((100 * blurred) / baseline).toFixed(1)} %), own ${ownBlurred.toFixed(0)}`);

    // The effect's own rate, from its second report (the first covers its start).
    const stats = await waitFor('the effect to report its rate twice', async () => {
      const s = await alice.page.evaluate(() => /** @type {any} */ (window).confabBackground());
      return { ok: s.reports >= 2, value: s };
    });
    t.diagnostic(`blur at 640x360 on this machine: ${stats.fps?.toFixed(1)} fps, segmentation ${stats.segmentMs?.toFixed(1)} ms a frame`);
    assert.ok(stats.fps >= 10, `the effect runs at ${JSON.stringify(stats)}`);
    await alice.page.screenshot({ path: artifact('blur-alice.png') });

    await blurButton(alice).click();
    const again = await waitSharpness(bob, aliceId, "Alice's tile at Bob to regain its detail", (v) => v > baseline * 0.6);
    await waitSharpness(alice, aliceId, 'her own tile to regain its detail', (v) => v > ownBaseline * 0.6);
    t.diagnostic(`sharpness after: remote ${again.toFixed(0)}`);
    assert.equal(await blurButton(alice).getAttribute('aria-pressed'), 'false');

    // Chosen before joining: Carol arrives blurred.
    const carol = await openPerson(browser, 'Carol', `${server.url}/r/${room}`);
    people.push(carol);
    await blurButton(carol).click();
    await waitFor("Carol's preview toggle to be pressed", async () => {
      const v = await blurButton(carol).getAttribute('aria-pressed');
      return { ok: v === 'true', value: v };
    });
    const carolId = await join(carol);
    assert.equal(await blurButton(carol).getAttribute('aria-pressed'), 'true', 'the room button follows');
    await waitSharpness(bob, carolId, "Carol's tile at Bob, blurred", (v) => v < baseline * 0.2);
    await bob.page.screenshot({ path: artifact('blur-bob.png') });

    // On a phone the toggle sits in the More menu.
    await bob.page.setViewportSize({ width: 390, height: 844 });
    await bob.page.getByRole('button', { name: 'More' }).click();
    const menuBlur = bob.page.locator('#more-menu').getByRole('button', { name: 'Blur background' });
    await menuBlur.click();
    await waitFor("Bob's menu toggle to be pressed", async () => {
      const v = await menuBlur.getAttribute('aria-pressed');
      return { ok: v === 'true', value: v };
    });
    const bobId = await participantId(bob);
    await waitSharpness(bob, bobId, "Bob's own tile, blurred from the menu", (v) => v < ownBaseline * 0.2);

    // A server without the files (as a build without npm): disabled, with the reason.
    const dan = await openPerson(browser, 'Dan', `${server.url}/r/${room}`);
    people.push(dan);
    await dan.page.route('**/vendor/mediapipe/manifest.json', (route) =>
      route.fulfill({
        json: { available: false, reason: 'Background blur is not available: built without npm.' },
      }),
    );
    await dan.page.reload();
    await waitFor("Dan's blur button to be disabled", async () => {
      const disabled = await blurButton(dan).isDisabled();
      return { ok: disabled, value: disabled };
    });
    const tip = await dan.page.locator('#tip-pre-blur').textContent();
    assert.equal(tip, 'Background blur is not available: built without npm.');
  } catch (err) {
    for (const p of people) await saveDiagnostics(p, `blur-${p.name}`);
    throw new Error(`${/** @type {Error} */ (err).message}\n--- server log ---\n${server.tail()}`);
  } finally {
    await closeBrowser(browser);
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
