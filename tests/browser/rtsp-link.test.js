// @ts-check
/**
 * **Copy RTSP link** in a tile's menu, against a real server: the link copied to the clipboard
 * (and shown in the menu) is `rtsp://host:port/room/id` with the port the server really
 * listens on, and ffprobe opens it and finds a video stream. In a password room the link
 * carries a viewer token, without which the server refuses the player.
 *
 * Also saves the README's screenshot of a meeting (two people, one with its background
 * blurred, and a camera pushed over RTSP) as artifacts/meeting.png.
 *
 * Needs the server binary, Chromium, ffmpeg and ffprobe. Artifacts: tests/browser/artifacts/rtsp-link-*.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
import { REPO_ROOT, passwordHash, startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

const PASSWORD = 'correct horse battery';

/**
 * What ffprobe finds at `url`: the streams' types, or its error.
 * @param {string} url
 */
function probe(url) {
  const r = spawnSync(
    process.env.FFPROBE_BIN ?? 'ffprobe',
    ['-v', 'error', '-rtsp_transport', 'tcp', '-timeout', '10000000', '-show_entries', 'stream=codec_type,codec_name', '-of', 'json', url],
    { timeout: 30_000, encoding: 'utf8' },
  );
  if (r.status !== 0) return { streams: [], error: `${r.status} ${r.stderr}` };
  const streams = (JSON.parse(r.stdout).streams ?? []).map((/** @type {any} */ s) => `${s.codec_type}/${s.codec_name}`);
  return { streams, error: null };
}

/**
 * Opens `id`'s tile menu on `person`'s page, copies the RTSP link, and returns what the
 * clipboard and the menu then hold.
 * @param {Person} person
 * @param {string} label  the tile's label
 */
async function copyLink(person, label) {
  const { page } = person;
  await page.getByRole('button', { name: `Options for ${label}`, exact: true }).click();
  await page.getByRole('button', { name: 'Copy RTSP link', exact: true }).click();
  const shown = await waitFor('the link to show in the menu', async () => {
    const text = await page.locator('.tile-menu:not([hidden]) .rtsp-link').textContent();
    return { ok: Boolean(text), value: text ?? '' };
  });
  const clipboard = await page.evaluate(() => navigator.clipboard.readText());
  const hint = (await page.locator('.tile-menu:not([hidden]) .rtsp-hint').textContent()) ?? '';
  await page.keyboard.press('Escape');
  return { clipboard, shown, hint };
}

/**
 * Waits until `person` shows a picture on `id`'s tile.
 * @param {Person} person
 * @param {string} id
 */
function picture(person, id) {
  return waitFor(`${person.name} to show ${id}'s picture`, async () => {
    const w = await person.page.evaluate(
      (id) => document.querySelector(`[data-participant="${CSS.escape(id)}"] video`)?.videoWidth ?? 0,
      id,
    );
    return { ok: w > 0, value: w };
  });
}

/** @param {Person} person */
async function join(person, password = '') {
  await person.page.getByLabel('Your name').fill(person.name);
  if (password) {
    await person.page.getByRole('button', { name: 'Join' }).click();
    await person.page.getByLabel('Password').fill(password);
  }
  await person.page.getByRole('button', { name: 'Join' }).click();
  return participantId(person);
}

/**
 * ffmpeg pushing a test picture (H.264 without B-frames, Opus) to `url` as a camera.
 * @param {string} url
 */
function pushCamera(url) {
  const proc = spawn(process.env.FFMPEG_BIN ?? 'ffmpeg', [
    '-hide_banner', '-nostdin', '-loglevel', 'error', '-re',
    '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=25',
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-bf', '0', '-g', '50', '-tune', 'zerolatency', '-preset', 'veryfast',
    '-c:a', 'libopus', '-f', 'rtsp', '-rtsp_transport', 'tcp', url,
  ], { stdio: 'ignore' });
  return () => proc.kill('SIGKILL');
}

test('Copy RTSP link: the right address on the clipboard, which ffprobe plays; a token in protected rooms', { timeout: 300_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-rtsp-link-'));
  const config = path.join(dataDir, 'confab.toml');
  writeFileSync(config, `[[room]]\nname = "board"\npassword_hash = "${await passwordHash(PASSWORD, dataDir)}"\n`);
  const server = await startServer({ dataDir, logFile: artifact('rtsp-link-server.log'), config });
  const y4m = path.join(dataDir, 'portrait.y4m');
  const madeY4m = spawnSync(process.env.FFMPEG_BIN ?? 'ffmpeg', [
    '-v', 'error', '-y', '-i', path.join(REPO_ROOT, 'tests/browser/testdata/portrait.jpg'), '-frames:v', '1', '-pix_fmt', 'yuv420p', y4m,
  ]).status === 0;
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  /** @type {(() => void) | null} */
  let stopCamera = null;
  try {
    const rtsp = server.addresses().rtsp;
    assert.ok(rtsp, 'the server printed its RTSP address');
    const port = new URL(`rtsp://${rtsp}`).port;
    browser = await launchChromium(madeY4m ? [`--use-file-for-fake-video-capture=${y4m}`] : []);

    // An open room: no token in the link.
    const room = 'standup';
    const alice = await openPerson(browser, 'Alice', `${server.url}/r/${room}`);
    const bob = await openPerson(browser, 'Bob', `${server.url}/r/${room}`);
    people.push(alice, bob);
    for (const p of people) await p.page.context().grantPermissions(['clipboard-read', 'clipboard-write', 'camera', 'microphone'], { origin: server.url });
    const aliceId = await join(alice);
    await join(bob);
    await picture(bob, aliceId);
    const open = await copyLink(bob, 'Alice');
    const want = `rtsp://127.0.0.1:${port}/${room}/${aliceId}`;
    assert.equal(open.clipboard, want);
    assert.equal(open.shown, want);
    assert.match(open.hint, /VLC/);
    assert.match(open.hint, /ffplay/);
    const found = await waitFor(`ffprobe to find Alice's video at ${want}`, async () => {
      const r = probe(want);
      return { ok: r.streams.some((s) => s.startsWith('video/')), value: r };
    });
    t.diagnostic(`ffprobe ${want}: ${found.streams.join(', ')}`);

    // The README's picture: the two, Alice with her background blurred, and a camera.
    stopCamera = pushCamera(`rtsp://${rtsp}/${room}/door`);
    await alice.page.getByRole('button', { name: 'Blur background' }).click();
    await picture(bob, 'door');
    await waitFor("Alice's background effect to be composing", async () => {
      const s = await alice.page.evaluate(() => /** @type {any} */ (window).confabBackground());
      return { ok: s.reports >= 1, value: s };
    });
    const text = 'The door camera is in too: ffplay its RTSP link from the tile menu.';
    await bob.page.getByLabel('Message').fill(text);
    await bob.page.getByRole('button', { name: 'Send' }).click();
    await bob.page.getByRole('log').getByText(text).waitFor();
    await bob.page.mouse.move(0, 300);
    await bob.page.evaluate(() => /** @type {HTMLElement | null} */ (document.activeElement)?.blur());
    // Hover and focus styles fade out before the picture is taken (endless animations aside).
    await bob.page.waitForFunction(
      () => document.getAnimations().every((a) => a.effect?.getTiming().iterations === Infinity),
      null,
      { timeout: 10_000 },
    );
    await bob.page.screenshot({ path: artifact('meeting.png') });

    // A password room: the link carries a viewer token, and needs it.
    const carol = await openPerson(browser, 'Carol', `${server.url}/r/board`);
    const dan = await openPerson(browser, 'Dan', `${server.url}/r/board`);
    people.push(carol, dan);
    await dan.page.context().grantPermissions(['clipboard-read', 'clipboard-write', 'camera', 'microphone'], { origin: server.url });
    const carolId = await join(carol, PASSWORD);
    await join(dan, PASSWORD);
    await picture(dan, carolId);
    const prot = await copyLink(dan, 'Carol');
    const m = /^rtsp:\/\/127\.0\.0\.1:(\d+)\/board\/([^?]+)\?token=([\w.-]+)$/.exec(prot.clipboard);
    assert.ok(m, prot.clipboard);
    assert.deepEqual([m[1], m[2]], [port, carolId]);
    const withToken = await waitFor("ffprobe to find Carol's video with the link's token", async () => {
      const r = probe(prot.clipboard);
      return { ok: r.streams.some((s) => s.startsWith('video/')), value: r };
    });
    t.diagnostic(`ffprobe (token): ${withToken.streams.join(', ')}`);
    const without = probe(`rtsp://127.0.0.1:${port}/board/${carolId}`);
    assert.equal(without.streams.length, 0, 'without the token the server refuses');
    assert.match(without.error ?? '', /401|Unauthorized/i);
  } catch (err) {
    for (const p of people) await saveDiagnostics(p, `rtsp-link-${p.name}`);
    throw new Error(`${/** @type {Error} */ (err).message}\n--- server log ---\n${server.tail()}`);
  } finally {
    stopCamera?.();
    await closeBrowser(browser);
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
