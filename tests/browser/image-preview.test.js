// @ts-check
/**
 * Image previews that respect people, end to end: Alice shares a phone-style photo (2400x1350
 * JPEG with an EXIF block: orientation 6, "rotate 90° to show", and a GPS position) in the
 * chat. Bob's chat shows the server's preview, upright (720x1280); its detail view says how
 * much smaller it is and how faithful (PSNR, SSIM); the preview carries no EXIF or GPS, and the
 * original still downloads unchanged, GPS included.
 *
 * Needs the server binary, Chromium and ffmpeg (to make the photo from
 * testdata/portrait.jpg). Artifacts: tests/browser/artifacts/preview-*.
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
import { REPO_ROOT, startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

/** GPSLatitude 48/1 51/1 30/1 as the EXIF block stores it (little endian rationals). */
const GPS_LATITUDE = Buffer.from([48, 0, 0, 0, 1, 0, 0, 0, 51, 0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 0, 1, 0, 0, 0]);

/**
 * `jpeg` with an APP1 EXIF block after SOI, as a phone writes it: IFD0 with Orientation and a
 * GPS IFD with GPSLatitudeRef "N" and GPSLatitude.
 * @param {Buffer} jpeg
 * @param {number} orientation
 */
function withExif(jpeg, orientation) {
  /** @param {number} tag @param {number} type @param {number} count @param {Buffer} value */
  const entry = (tag, type, count, value) => {
    const e = Buffer.alloc(12);
    e.writeUInt16LE(tag, 0);
    e.writeUInt16LE(type, 2);
    e.writeUInt32LE(count, 4);
    value.copy(e, 8);
    return e;
  };
  const u16 = (/** @type {number} */ v) => { const b = Buffer.alloc(4); b.writeUInt16LE(v); return b; };
  const u32 = (/** @type {number} */ v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
  const tiff = Buffer.concat([
    Buffer.from('II*\0', 'latin1'), u32(8),
    u16(2).subarray(0, 2), entry(0x0112, 3, 1, u16(orientation)), entry(0x8825, 4, 1, u32(38)), u32(0),
    u16(2).subarray(0, 2), entry(0x0001, 2, 2, Buffer.from('N\0\0\0', 'latin1')), entry(0x0002, 5, 3, u32(68)), u32(0),
    GPS_LATITUDE,
  ]);
  const header = Buffer.alloc(4);
  header.writeUInt16BE(0xffe1, 0);
  header.writeUInt16BE(2 + 6 + tiff.length, 2);
  return Buffer.concat([jpeg.subarray(0, 2), header, Buffer.from('Exif\0\0', 'latin1'), tiff, jpeg.subarray(2)]);
}

/** @param {Person} person */
async function join(person) {
  await person.page.getByLabel('Your name').fill(person.name);
  await person.page.getByRole('button', { name: 'Join' }).click();
  return participantId(person);
}

test('image previews: upright, smaller, without EXIF/GPS, with PSNR and SSIM; the original unchanged', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-preview-'));
  const big = path.join(dataDir, 'big.jpg');
  const made = spawnSync(process.env.FFMPEG_BIN ?? 'ffmpeg', [
    '-v', 'error', '-y', '-i', path.join(REPO_ROOT, 'tests/browser/testdata/portrait.jpg'),
    '-vf', 'scale=2400:1350', '-q:v', '2', big,
  ]);
  if (made.status !== 0) {
    t.skip('ffmpeg is needed to make the photo (scripts/setup.sh installs it)');
    return;
  }
  const photo = withExif(readFileSync(big), 6);
  const server = await startServer({ dataDir, logFile: artifact('preview-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  try {
    browser = await launchChromium();
    const room = 'photos';
    const alice = await openPerson(browser, 'Alice', `${server.url}/r/${room}`);
    const bob = await openPerson(browser, 'Bob', `${server.url}/r/${room}`);
    people.push(alice, bob);
    await join(alice);
    await join(bob);

    await alice.page.locator('#chat-file').setInputFiles({ name: 'holiday.jpg', mimeType: 'image/jpeg', buffer: photo });
    const shown = await waitFor('Bob to show the upright preview', async () => {
      const img = await bob.page.evaluate(() => {
        const i = /** @type {HTMLImageElement | null} */ (document.querySelector('[role="log"] img[alt="holiday.jpg"]'));
        return i && { src: i.src, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight };
      });
      return { ok: Boolean(img?.complete && img.width > 0), value: img };
    });
    assert.deepEqual([shown?.width, shown?.height], [720, 1280], 'rotated by its EXIF orientation, longest side 1280');
    assert.match(shown?.src ?? '', /\/files\/[0-9a-f]{64}\/preview(\?token=[^&]+)?$/);

    // The preview has no metadata left; the original is as uploaded.
    const preview = Buffer.from(await (await fetch(/** @type {string} */ (shown?.src))).arrayBuffer());
    assert.equal(preview.indexOf('Exif'), -1, 'no EXIF in the preview');
    assert.equal(preview.indexOf(GPS_LATITUDE), -1, 'no GPS in the preview');
    const originalUrl = (shown?.src ?? '').replace(/\/preview(\?|$)/, '$1');
    const original = Buffer.from(await (await fetch(originalUrl)).arrayBuffer());
    assert.ok(original.equals(photo), 'the original downloads unchanged');

    // The detail view: size saving and fidelity.
    await bob.page.getByRole('log').getByRole('link', { name: /holiday\.jpg/ }).click();
    const dialog = bob.page.getByRole('dialog', { name: 'holiday.jpg' });
    await dialog.waitFor();
    const saving = /** @type {string} */ (await waitFor('the detail view to show the figures', async () => {
      const text = (await dialog.locator('.preview-saving').textContent()) ?? '';
      return { ok: text.startsWith('Preview'), value: text };
    }));
    const fidelity = (await dialog.locator('.preview-fidelity').textContent()) ?? '';
    t.diagnostic(saving);
    t.diagnostic(fidelity);
    assert.match(saving, /^Preview 720×1280, [\d.]+ KB: \d+ % smaller than the original \(1350×2400, [\d.]+ (KB|MB)\)\.$/);
    const m = /PSNR ([\d.]+) dB, SSIM ([\d.]+)/.exec(fidelity);
    assert.ok(m, fidelity);
    assert.ok(Number(m[1]) > 30, `PSNR ${m[1]}`);
    assert.ok(Number(m[2]) > 0.9, `SSIM ${m[2]}`);
    await bob.page.screenshot({ path: artifact('preview-detail.png') });
    const download = dialog.getByRole('link', { name: 'Download the original' });
    assert.equal(new URL((await download.getAttribute('href')) ?? '').pathname, new URL(originalUrl).pathname);
  } catch (err) {
    for (const p of people) await saveDiagnostics(p, `preview-${p.name}`);
    throw new Error(`${/** @type {Error} */ (err).message}\n--- server log ---\n${server.tail()}`);
  } finally {
    await closeBrowser(browser);
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
