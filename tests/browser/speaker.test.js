// @ts-check
/**
 * Two Chromium pages in one room; both microphones play the same speech-like sound (a WAV this
 * test writes: tone bursts of changing pitch with short pauses, fed as the fake microphone).
 * With one page's microphone off, the other is the only one heard: the server must name it the
 * speaker, and both pages mark its tile `data-speaking="true"`; when they swap, the mark moves.
 * Also checks what the publish answer asked of Opus (in-band FEC, DTX) as Chromium applied it.
 * Prints how long each switch took.
 *
 * Needs the server binary (CONFAB_BIN, default target/debug/confab) and Chromium
 * (CHROMIUM_BIN, default /usr/bin/chromium). Artifacts go to tests/browser/artifacts/.
 */
import assert from 'node:assert/strict';
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
import { startServer } from './server.js';

/**
 * A 48 kHz mono 16-bit WAV of `seconds` of speech-like sound: 200 ms tone bursts (pitch
 * moving between 180 and 600 Hz, so that noise suppression does not learn it as noise)
 * separated by 80 ms pauses, at about −15 dBov.
 * @param {number} seconds
 */
function speechLikeWav(seconds) {
  const rate = 48_000;
  const n = rate * seconds;
  const data = Buffer.alloc(n * 2);
  let phase = 0;
  for (let i = 0; i < n; i++) {
    const t = i / rate;
    const inBurst = t % 0.28 < 0.2;
    const burst = Math.floor(t / 0.28);
    const pitch = 180 + ((burst * 137) % 420) + 60 * Math.sin(2 * Math.PI * 3 * t);
    phase += (2 * Math.PI * pitch) / rate;
    const sample = inBurst ? 0.25 * Math.sin(phase) + 0.08 * Math.sin(2.7 * phase) : 0;
    data.writeInt16LE(Math.round(sample * 32767), i * 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8);
  header.write('fmt ', 12);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]);
}

/**
 * Which tiles carry `data-speaking="true"` on `page`.
 * @param {import('playwright-core').Page} page
 */
function speakingTiles(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-speaking="true"]')].map(
      (el) => /** @type {HTMLElement} */ (el).dataset.participant ?? /** @type {HTMLElement} */ (el).dataset.tile,
    ),
  );
}

/**
 * The Opus parameters of the page's publish connection: the answer it applied, and the codec
 * its outbound audio uses (getStats).
 * @param {import('playwright-core').Page} page
 */
function publishedOpus(page) {
  return page.evaluate(async () => {
    /** @type {RTCPeerConnection | null | undefined} */
    const pc = /** @type {any} */ (window).confab?.publishPc;
    if (!pc) return null;
    const sdp = pc.remoteDescription?.sdp ?? '';
    const pt = /a=rtpmap:(\d+) opus\//i.exec(sdp)?.[1];
    const answered = pt ? new RegExp(`a=fmtp:${pt} (.*)`).exec(sdp)?.[1]?.trim() ?? null : null;
    /** @type {any[]} */
    const all = [];
    (await pc.getStats()).forEach((s) => all.push(s));
    const out = all.find((s) => s.type === 'outbound-rtp' && s.kind === 'audio');
    const codec = all.find((s) => s.id === out?.codecId);
    return {
      answered,
      statsFmtp: codec?.sdpFmtpLine ?? null,
      audioLevelExt: /urn:ietf:params:rtp-hdrext:ssrc-audio-level/.test(sdp),
      packetsSent: out?.packetsSent ?? 0,
    };
  });
}

test('the server names who is speaking, and the mark moves when they swap', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-speaker-'));
  const wav = path.join(dataDir, 'speech.wav');
  writeFileSync(wav, speechLikeWav(10));
  const server = await startServer({ dataDir, logFile: artifact('server-speaker.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav}`]);
    const room = `s-${Math.random().toString(36).slice(2, 10)}`;
    for (const name of ['Alice', 'Bob']) {
      people.push(await openPerson(browser, name, `${server.url}/r/${room}`));
    }
    const [alice, bob] = people;
    /** @param {import('./browser.js').Person} person */
    const mic = (person) => person.page.getByRole('button', { name: 'Microphone', exact: true });
    // Bob joins with his microphone off: from the start, only Alice is heard.
    await waitFor("Bob's microphone to be on before joining", async () => {
      const pressed = await mic(bob).getAttribute('aria-pressed');
      return { ok: pressed === 'true', value: pressed };
    });
    await mic(bob).click();
    for (const { name, page } of people) {
      await page.getByLabel('Your name').fill(name);
      await page.getByRole('button', { name: 'Join' }).click();
    }
    const [aliceId, bobId] = [await participantId(alice), await participantId(bob)];
    for (const { page } of people) {
      for (const id of [aliceId, bobId]) await page.locator(`[data-participant="${id}"]`).waitFor();
    }

    // Only Alice is heard: both pages mark her.
    const from = Date.now();
    for (const person of people) {
      await waitFor(`${person.name} to mark ${aliceId} as speaking`, async () => {
        const speaking = await speakingTiles(person.page);
        return { ok: speaking.length === 1 && speaking[0] === aliceId, value: speaking };
      });
    }
    t.diagnostic(`Alice marked as speaking on both pages ${Date.now() - from} ms after both were in`);

    // Chromium encodes with what the answer asked for (Alice's publish connection; Bob's has
    // no audio yet).
    for (const { name, page } of [alice]) {
      const opus = await waitFor(`${name}'s publish connection to send Opus`, async () => {
        const o = await publishedOpus(page);
        return { ok: Boolean(o && o.packetsSent > 0 && o.statsFmtp), value: o };
      });
      t.diagnostic(`${name} publish answer Opus fmtp: ${opus?.answered}; outbound codec sdpFmtpLine: ${opus?.statsFmtp}`);
      for (const param of ['useinbandfec=1', 'usedtx=1', 'minptime=10']) {
        assert.ok(opus?.answered?.split(';').includes(param), `${name}: the answer has ${param}: ${opus?.answered}`);
      }
      assert.ok(opus?.statsFmtp?.split(';').includes('useinbandfec=1'), `${name}: Chromium uses FEC: ${opus?.statsFmtp}`);
      assert.ok(opus?.audioLevelExt, `${name}: the answer takes the audio-level extension`);
    }

    /**
     * Turns `off`'s microphone off and `on`'s on, then waits until both pages mark `on`'s
     * tile (and only it) as speaking; returns how long that took.
     * @param {import('./browser.js').Person} on
     * @param {import('./browser.js').Person} off
     * @param {string} onId
     */
    const onlyOneTalks = async (on, off, onId) => {
      if ((await mic(off).getAttribute('aria-pressed')) === 'true') await mic(off).click();
      if ((await mic(on).getAttribute('aria-pressed')) !== 'true') await mic(on).click();
      await waitFor(`${off.name}'s microphone to be off`, async () => {
        const pressed = await mic(off).getAttribute('aria-pressed');
        return { ok: pressed === 'false', value: pressed };
      });
      const from = Date.now();
      for (const person of people) {
        await waitFor(`${person.name} to mark ${onId} as speaking`, async () => {
          const speaking = await speakingTiles(person.page);
          return { ok: speaking.length === 1 && speaking[0] === onId, value: speaking };
        });
      }
      return Date.now() - from;
    };

    const swap = await onlyOneTalks(bob, alice, bobId);
    t.diagnostic(`swapped: Bob marked as speaking on both pages ${swap} ms after the clicks`);
    const back = await onlyOneTalks(alice, bob, aliceId);
    t.diagnostic(`swapped back: Alice marked as speaking on both pages ${back} ms after the clicks`);
    // The algorithm takes over after 1 s of being clearly louder, its window is 1 s long;
    // the rest is the pages' and the network's (Bob's first unmute also publishes his audio).
    for (const ms of [swap, back]) assert.ok(ms < 8_000, `the mark moved in ${ms} ms`);

    // DTX: a muted microphone (silence) costs a packet per 400 ms instead of one per 20 ms.
    /** @param {import('./browser.js').Person} person */
    const sent = async ({ page }) => {
      const o = await publishedOpus(page);
      return { packets: o?.packetsSent ?? 0, at: Date.now() };
    };
    const start = [await sent(alice), await sent(bob)];
    const end = await waitFor('2 s of audio to be sent', async () => {
      const now = [await sent(alice), await sent(bob)];
      return { ok: now[0].at - start[0].at >= 2_000, value: now };
    });
    const [talking, muted] = [0, 1].map((i) => ((end[i].packets - start[i].packets) * 1000) / (end[i].at - start[i].at));
    t.diagnostic(`audio packets/s: Alice talking ${talking.toFixed(1)}, Bob muted (DTX) ${muted.toFixed(1)}`);
    assert.ok(talking > 30, `Alice sends every 20 ms while talking: ${talking}/s`);
    assert.ok(muted < 10, `Bob's silence is sent as DTX: ${muted}/s`);

    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const changes = Number(/^confab_speaker_changes_total (\d+)$/m.exec(metrics)?.[1] ?? NaN);
    t.diagnostic(`confab_speaker_changes_total ${changes}`);
    assert.ok(changes >= 3, `at least the three changes seen: ${changes}`);
    await bob.page.screenshot({ path: artifact('speaker.png') });
    failed = false;
  } finally {
    if (failed) {
      for (const p of people) await saveDiagnostics(p, `speaker-${p.name}`);
      writeFileSync(artifact('server-speaker-tail.log'), server.tail());
    }
    await closeBrowser(browser);
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('in a meeting of more than six tiles the speaker is shown large', { timeout: 60_000 }, async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-speaker-view-'));
  const server = await startServer({ dataDir, logFile: artifact('server-speaker-view.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  try {
    browser = await launchChromium();
    const { page } = await openPerson(browser, 'Viewer', `${server.url}/`);
    // The page's own tile grid, driven directly: seven participants, then the speaker changes.
    const seen = await page.evaluate(async () => {
      const { TileGrid, SPEAKER_VIEW_AFTER } = await import('/web/tiles.js');
      const stage = document.createElement('div');
      stage.style.cssText = 'position: relative; width: 1000px; height: 600px';
      document.body.replaceChildren(stage);
      const grid = new TileGrid(stage);
      /** @param {string} id */
      const add = (id) =>
        grid.upsert(`${id}:camera`, {
          participant: id,
          source: 'camera',
          name: id,
          label: id,
          kind: 'browser',
          self: id === 'p0',
          audio: true,
          video: false,
          stream: null,
        });
      const look = () =>
        [...stage.querySelectorAll('[data-participant]')].map((el) => {
          const e = /** @type {HTMLElement} */ (el);
          return {
            id: e.dataset.participant,
            speaking: e.dataset.speaking ?? null,
            large: e.classList.contains('speaker-view'),
            width: parseFloat(e.style.width),
          };
        });
      for (let i = 0; i < SPEAKER_VIEW_AFTER; i++) add(`p${i}`);
      grid.setSpeaker('p3');
      const six = look();
      add('p6');
      const seven = look();
      grid.setSpeaker('p5');
      const moved = look();
      grid.togglePin('p1:camera');
      const pinned = look();
      grid.togglePin('p1:camera');
      grid.setSpeaker(null);
      const none = look();
      return { six, seven, moved, pinned, none };
    });
    /** @typedef {typeof seen.six} Tiles */
    const speaking = (/** @type {Tiles} */ tiles) => tiles.filter((t) => t.speaking === 'true').map((t) => t.id);
    const large = (/** @type {Tiles} */ tiles) => tiles.filter((t) => t.large).map((t) => t.id);
    assert.deepEqual(speaking(seen.six), ['p3'], 'six tiles: marked');
    assert.deepEqual(large(seen.six), [], 'six tiles: the grid stays');
    assert.deepEqual(speaking(seen.seven), ['p3']);
    assert.deepEqual(large(seen.seven), ['p3'], 'seven tiles: the speaker is large');
    const widest = (/** @type {Tiles} */ tiles) => [...tiles].sort((a, b) => b.width - a.width)[0].id;
    assert.equal(widest(seen.seven), 'p3');
    assert.ok(
      (seen.seven.find((t) => t.id === 'p3')?.width ?? 0) > 2 * (seen.seven.find((t) => t.id === 'p0')?.width ?? 0),
      JSON.stringify(seen.seven),
    );
    assert.deepEqual(speaking(seen.moved), ['p5'], 'the mark moves');
    assert.deepEqual(large(seen.moved), ['p5'], 'and so does the large tile');
    assert.deepEqual(large(seen.pinned), [], 'a pinned tile wins over the speaker');
    assert.equal(widest(seen.pinned), 'p1');
    assert.deepEqual(speaking(seen.pinned), ['p5'], 'still marked while another is pinned');
    assert.deepEqual(speaking(seen.none), [], 'no speaker, no mark');
    assert.deepEqual(large(seen.none), []);
  } finally {
    await closeBrowser(browser);
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
