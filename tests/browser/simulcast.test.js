// @ts-check
/**
 * Simulcast in Chromium: Alice's 720p camera goes out as three layers (320x180, 640x360,
 * 1280x720); Bob receives exactly one of them, the one his tile of her needs. With a large
 * window he gets the full picture; with a small one the quarter picture; large again, the full
 * one. Each move happens at a keyframe of the new layer, and Bob's decoder never stops (frames
 * keep being decoded, no gap he would NACK). Alice's page encodes only the layers someone
 * receives (dynacast): while Bob takes the quarter picture her half and full layers pause.
 * Prints how long each switch took.
 *
 * Needs the server binary (CONFAB_BIN, default target/debug/confab) and Chromium
 * (CHROMIUM_BIN, default /usr/bin/chromium). Artifacts go to tests/browser/artifacts/.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  artifact,
  closeBrowser,
  joinAll,
  launchChromium,
  openPerson,
  saveDiagnostics,
  videoPlays,
  waitFor,
} from './browser.js';
import { startServer } from './server.js';

/**
 * What Bob's page receives of the one remote video: its decoded width and counters.
 * @param {import('./browser.js').Person} person
 */
function inbound({ page }) {
  return page.evaluate(async () => {
    const c = /** @type {any} */ (window).confab;
    /** @type {any} */
    let v = null;
    (await c.subscribePc.getStats()).forEach((/** @type {any} */ s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && (s.framesDecoded ?? 0) > 0) v = s;
    });
    return v && {
      width: v.frameWidth ?? 0,
      framesDecoded: v.framesDecoded ?? 0,
      keyFramesDecoded: v.keyFramesDecoded ?? 0,
      packetsLost: v.packetsLost ?? 0,
      nackCount: v.nackCount ?? 0,
      freezeCount: v.freezeCount ?? 0,
    };
  });
}

/**
 * The layers Alice's page sends: rid → width, for the encodings that have sent pictures.
 * @param {import('./browser.js').Person} person
 */
function outbound({ page }) {
  return page.evaluate(async () => {
    const c = /** @type {any} */ (window).confab;
    /** @type {Record<string, number>} */
    const layers = {};
    (await c.publishPc.getStats()).forEach((/** @type {any} */ s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid && (s.frameWidth ?? 0) > 0) {
        layers[s.rid] = s.frameWidth;
      }
    });
    return layers;
  });
}

/**
 * Which of the camera's encodings the page has switched on (`active`), by rid.
 * @param {import('./browser.js').Person} person
 */
function activeEncodings({ page }) {
  return page.evaluate(() => {
    const c = /** @type {any} */ (window).confab;
    const sender = c.senders.get('camera');
    /** @type {Record<string, boolean>} */
    const on = {};
    for (const e of sender.getParameters().encodings) on[e.rid] = e.active !== false;
    return on;
  });
}

test('a simulcast camera: each viewer gets the layer its tile needs, switched at keyframes', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'confab-browser-simulcast-'));
  const server = await startServer({ dataDir: dir, logFile: artifact('simulcast-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium();
    const room = `s-${Math.random().toString(36).slice(2, 10)}`;
    people.push(await openPerson(browser, 'Alice', `${server.url}/r/${room}`));
    people.push(
      await openPerson(browser, 'Bob', `${server.url}/r/${room}`, [], { viewport: { width: 2400, height: 1300 } }),
    );
    const [alice, bob] = people;
    const [aliceId] = await joinAll(people);
    await videoPlays(bob, aliceId);

    // Alice's camera is captured at 720p and configured as three encodings.
    const configured = await alice.page.evaluate(() => {
      const sender = /** @type {any} */ (window).confab.senders.get('camera');
      return {
        height: sender.track.getSettings().height,
        rids: sender.getParameters().encodings.map((/** @type {any} */ e) => e.rid),
      };
    });
    assert.deepEqual(configured, { height: 720, rids: ['q', 'h', 'f'] });
    const sent = { q: 320, h: 640, f: 1280 };
    /**
     * Waits until Bob decodes `width`-wide pictures of Alice, then checks his decoder went on.
     * @param {string} what
     * @param {number} width
     */
    const receives = async (what, width) => {
      const before = await inbound(bob);
      const started = Date.now();
      const now = await waitFor(`Bob to receive ${what} (${width} wide)`, async () => {
        const s = await inbound(bob);
        return { ok: s !== null && s.width === width, value: s };
      });
      const took = Date.now() - started;
      // Frames go on being decoded after the switch.
      const after = await waitFor(`Bob's decoder to go on after the switch to ${what}`, async () => {
        const s = await inbound(bob);
        return { ok: s !== null && s.framesDecoded > now.framesDecoded + 15, value: s };
      });
      console.log(`switch to ${what}: ${took} ms; ${JSON.stringify({ before, after })}`);
      return { took, before, after };
    };

    // A large window: Alice's tile is wider than 800 device pixels, so the full picture.
    await receives('the full layer', sent.f);
    console.log(`Alice sends ${JSON.stringify(await outbound(alice))}`);
    // A small window: the quarter picture.
    await bob.page.setViewportSize({ width: 360, height: 300 });
    const down = await receives('the quarter layer', sent.q);
    // Nobody receives Alice's half and full pictures now: her page stops encoding them.
    const paused = await waitFor('Alice to pause her unused layers', async () => {
      const on = await activeEncodings(alice);
      return { ok: on.q && !on.h && !on.f, value: on };
    });
    const metricsText = await (await fetch(`${server.url}/metrics`)).text();
    const gauge = Number(/^confab_paused_layers (-?\d+)$/m.exec(metricsText)?.[1] ?? NaN);
    assert.ok(gauge >= 2, `confab_paused_layers ${gauge} while ${JSON.stringify(paused)}`);
    await bob.page.setViewportSize({ width: 2400, height: 1300 });
    const up = await receives('the full layer again', sent.f);
    assert.ok((await activeEncodings(alice)).f, 'the full layer is encoded again');

    // Data saver, from the More menu: the smallest picture whatever the tile's size, then no
    // video at all, then back to normal.
    /** @param {string} name */
    const menu = async (name) => {
      await bob.page.getByRole('button', { name: 'More' }).click();
      await bob.page.getByRole('button', { name }).click();
    };
    await menu('Low data');
    assert.equal(await bob.page.locator('#low-data').getAttribute('aria-pressed'), 'true');
    await receives('the quarter layer with Low data', sent.q);
    await menu('Audio only');
    const stopped = await waitFor("Bob's video to stop with Audio only", async () => {
      const a = await inbound(bob);
      await new Promise((r) => setTimeout(r, 1_000));
      const b = await inbound(bob);
      return { ok: a !== null && b !== null && b.framesDecoded === a.framesDecoded, value: { a, b } };
    });
    console.log(`audio only: ${JSON.stringify(stopped)}`);
    // Audio only again switches the saver off (the modes exclude each other).
    await menu('Audio only');
    assert.equal(await bob.page.locator('#low-data').getAttribute('aria-pressed'), 'false');
    await receives('the full layer with the data saver off', sent.f);

    // Moving between layers costs no lost packets: the server's numbering has no gap.
    assert.ok(up.after.packetsLost - (down.before?.packetsLost ?? 0) <= 2, `lost ${JSON.stringify({ down, up })}`);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const switches = Number(/^confab_layer_switches_total (\d+)$/m.exec(metrics)?.[1] ?? 0);
    assert.ok(switches >= 2, `confab_layer_switches_total ${switches}`);
    await bob.page.screenshot({ path: artifact('simulcast.png') });
    failed = false;
  } finally {
    if (failed) {
      for (const p of people) await saveDiagnostics(p, `simulcast-${p.name}`);
      console.log(server.tail());
    }
    await closeBrowser(browser);
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
