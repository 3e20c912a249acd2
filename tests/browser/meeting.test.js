// @ts-check
/**
 * Three Chromium pages meet in one room through the meeting page's UI, against a real confab
 * server: each must see and hear the other two (H.264 video decoded, Opus audio received),
 * and when one leaves the others drop its tile. Prints the time from clicking Join to the
 * first remote video frame per page.
 *
 * Needs the server binary (CONFAB_BIN, default target/debug/confab) and Chromium
 * (CHROMIUM_BIN, default /usr/bin/chromium). Artifacts (screenshots, page and server logs,
 * SDPs) go to tests/browser/artifacts/.
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

/**
 * Injected before the page's own scripts: records when Join is clicked and when the first
 * frame of any remote participant's video is presented (requestVideoFrameCallback, with a
 * polling fallback), both on the page's clock; and, to tell where the time goes, when the
 * page got its id and when each peer connection reached `connected`.
 */
function firstFrameProbe() {
  /** @type {Record<'joinClickedAt' | 'firstRemoteFrameAt' | 'joinedAt' | 'publishConnectedAt' | 'subscribeConnectedAt', number | null>} */
  const probe = {
    joinClickedAt: null,
    firstRemoteFrameAt: null,
    joinedAt: null,
    publishConnectedAt: null,
    subscribeConnectedAt: null,
  };
  /** @type {any} */ (window).__probe = probe;
  document.addEventListener(
    'click',
    (e) => {
      const button = e.target instanceof Element ? e.target.closest('button') : null;
      if (button?.textContent?.trim() === 'Join' && probe.joinClickedAt === null) {
        probe.joinClickedAt = performance.now();
      }
    },
    true,
  );
  /** @param {HTMLVideoElement} video */
  const isRemote = (video) => {
    const tile = video.closest('[data-participant]');
    const self = /** @type {any} */ (window).confab?.id;
    return tile instanceof HTMLElement && self != null && tile.dataset.participant !== self;
  };
  /** @param {HTMLVideoElement} video */
  const sawFrame = (video) => {
    if (probe.firstRemoteFrameAt === null && isRemote(video) && video.videoWidth > 0) {
      probe.firstRemoteFrameAt = performance.now();
    }
  };
  const watched = new WeakSet();
  const watchAll = () => {
    for (const video of document.querySelectorAll('video')) {
      if (watched.has(video)) continue;
      watched.add(video);
      if ('requestVideoFrameCallback' in video) {
        /** @type {VideoFrameRequestCallback} */
        const onFrame = () => {
          sawFrame(video);
          if (probe.firstRemoteFrameAt === null) video.requestVideoFrameCallback(onFrame);
        };
        video.requestVideoFrameCallback(onFrame);
      }
    }
  };
  new MutationObserver(watchAll).observe(document, { childList: true, subtree: true });
  const poll = setInterval(() => {
    watchAll();
    for (const video of document.querySelectorAll('video')) {
      if (video.currentTime > 0) sawFrame(video);
    }
    const c = /** @type {any} */ (window).confab;
    const now = performance.now();
    if (probe.joinedAt === null && c?.id) probe.joinedAt = now;
    if (probe.publishConnectedAt === null && c?.publishPc?.connectionState === 'connected') {
      probe.publishConnectedAt = now;
    }
    if (probe.subscribeConnectedAt === null && c?.subscribePc?.connectionState === 'connected') {
      probe.subscribeConnectedAt = now;
    }
    if (Object.values(probe).every((v) => v !== null)) clearInterval(poll);
  }, 20);
}

/**
 * Remote participants' videos as the page shows them.
 * @param {import('playwright-core').Page} page
 */
function remoteVideos(page) {
  return page.evaluate(() => {
    const self = /** @type {any} */ (window).confab?.id;
    return [...document.querySelectorAll('[data-participant]')]
      .filter((tile) => tile instanceof HTMLElement && tile.dataset.participant !== self)
      .map((tile) => {
        const video = tile.querySelector('video');
        return {
          id: /** @type {HTMLElement} */ (tile).dataset.participant,
          width: video?.videoWidth ?? 0,
          height: video?.videoHeight ?? 0,
          currentTime: video?.currentTime ?? 0,
          paused: video?.paused ?? true,
          // What a person sees: not hidden by a "camera off" state, not zero-sized.
          visible: video?.checkVisibility({ visibilityProperty: true }) ?? false,
        };
      });
  });
}

/**
 * The inbound RTP streams of the page's subscribe connection with their codecs.
 * @param {import('playwright-core').Page} page
 */
function inboundStats(page) {
  return page.evaluate(async () => {
    /** @type {RTCPeerConnection | null | undefined} */
    const pc = /** @type {any} */ (window).confab?.subscribePc;
    if (!pc) return [];
    /** @type {Map<string, any>} */
    const byId = new Map();
    (await pc.getStats()).forEach((s) => byId.set(s.id, s));
    return [...byId.values()]
      .filter((s) => s.type === 'inbound-rtp')
      .map((s) => ({
        kind: s.kind,
        mid: s.mid,
        mimeType: byId.get(s.codecId)?.mimeType ?? null,
        fmtp: byId.get(s.codecId)?.sdpFmtpLine ?? null,
        packetsReceived: s.packetsReceived ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        frameWidth: s.frameWidth ?? 0,
        frameHeight: s.frameHeight ?? 0,
      }));
  });
}

/**
 * The page's publish connection as the server's feedback shapes it: keyframe requests (PLI)
 * answered, and the send-side bandwidth estimate that exists only if the server sends
 * congestion feedback (TWCC).
 * @param {import('playwright-core').Page} page
 */
function outboundStats(page) {
  return page.evaluate(async () => {
    /** @type {RTCPeerConnection | null | undefined} */
    const pc = /** @type {any} */ (window).confab?.publishPc;
    if (!pc) return null;
    /** @type {any[]} */
    const all = [];
    (await pc.getStats()).forEach((s) => all.push(s));
    // A simulcast camera has one outbound stream per layer: their counts add up.
    const layers = all.filter((s) => s.type === 'outbound-rtp' && s.kind === 'video');
    /** @param {string} key */
    const sum = (key) => layers.reduce((n, s) => n + (s[key] ?? 0), 0);
    const video = layers.length > 0
      ? {
          pliCount: sum('pliCount'),
          nackCount: sum('nackCount'),
          keyFramesEncoded: sum('keyFramesEncoded'),
          framesEncoded: sum('framesEncoded'),
        }
      : undefined;
    const source = all.find((s) => s.type === 'media-source' && s.kind === 'video');
    // Several pairs may have succeeded; the estimate lives on the selected one.
    const selected = all.find((s) => s.type === 'transport')?.selectedCandidatePairId;
    const pair =
      all.find((s) => s.type === 'candidate-pair' && s.id === selected) ??
      all.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
    return {
      // Frames the (fake) camera delivered: when this lags far behind the time since Join,
      // a slow first frame is the capturer's doing, not the server's.
      sourceFrames: source?.frames ?? 0,
      pliCount: video?.pliCount ?? 0,
      nackCount: video?.nackCount ?? 0,
      keyFramesEncoded: video?.keyFramesEncoded ?? 0,
      framesEncoded: video?.framesEncoded ?? 0,
      availableOutgoingBitrate: pair?.availableOutgoingBitrate ?? null,
    };
  });
}

test('three browsers join a room, see and hear each other, and one leaves', { timeout: 240_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-browser-'));
  const server = await startServer({ dataDir, logFile: artifact('server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium();
    const room = `t-${Math.random().toString(36).slice(2, 10)}`;
    for (const name of ['Alice', 'Bob', 'Carol']) {
      people.push(await openPerson(browser, name, `${server.url}/r/${room}`, [firstFrameProbe]));
    }

    // Prejoin: type the name, wait for the local preview, then everyone clicks Join.
    for (const { name, page } of people) {
      await page.getByLabel('Your name').fill(name);
      await page.waitForFunction(
        () => /** @type {HTMLVideoElement | null} */ (document.querySelector('video'))?.videoWidth,
        null,
      );
    }
    await Promise.all(people.map(({ page }) => page.getByRole('button', { name: 'Join' }).click()));

    // Everyone sees a tile per participant and two remote videos that play.
    const ids = [];
    for (const person of people) {
      const id = await participantId(person);
      ids.push(id);
      await person.page.locator(`[data-participant="${id}"] video`).waitFor();
    }
    assert.equal(new Set(ids).size, 3, `participant ids are unique: ${ids}`);

    for (const { name, page } of people) {
      const before = await waitFor(`${name} to show two remote videos with frames`, async () => {
        const v = await remoteVideos(page);
        const ok =
          v.length === 2 && v.every((x) => x.width > 0 && x.currentTime > 0 && !x.paused && x.visible);
        return { ok, value: v };
      });
      await waitFor(`${name}'s remote videos to advance`, async () => {
        const now = await remoteVideos(page);
        const ok =
          now.length === 2 &&
          now.every((x) => x.currentTime > (before.find((b) => b.id === x.id)?.currentTime ?? Infinity));
        return { ok, value: { before, now } };
      });
    }

    for (const { name, page } of people) {
      const stats = await waitFor(`${name} to decode H.264 and receive Opus from two peers`, async () => {
        const s = await inboundStats(page);
        const video = s.filter((x) => x.kind === 'video' && x.mimeType === 'video/H264' && x.framesDecoded > 0);
        const audio = s.filter((x) => x.kind === 'audio' && x.mimeType === 'audio/opus' && x.packetsReceived > 0);
        return { ok: video.length >= 2 && audio.length >= 2, value: s };
      });
      for (const s of stats) {
        t.diagnostic(
          `${name} inbound ${s.kind} ${s.mimeType} ${s.fmtp ?? ''} packets=${s.packetsReceived}` +
            (s.kind === 'video' ? ` frames=${s.framesDecoded} ${s.frameWidth}x${s.frameHeight}` : ''),
        );
      }
    }
    await people[0].page.screenshot({ path: artifact('meeting.png') });

    const delays = [];
    for (const { name, page } of people) {
      const probe = await page.evaluate(() => /** @type {any} */ (window).__probe);
      assert.ok(probe.joinClickedAt !== null && probe.firstRemoteFrameAt !== null, `${name}: probe ${JSON.stringify(probe)}`);
      delays.push(Math.round(probe.firstRemoteFrameAt - probe.joinClickedAt));
      /** @param {number | null} at */
      const since = (at) => (at === null ? 'never' : `+${Math.round(at - probe.joinClickedAt)}`);
      t.diagnostic(
        `${name} after Join (ms): joined ${since(probe.joinedAt)}, publish connected ` +
          `${since(probe.publishConnectedAt)}, subscribe connected ${since(probe.subscribeConnectedAt)}, ` +
          `first remote frame ${since(probe.firstRemoteFrameAt)}`,
      );
    }
    for (const { name, page } of people) {
      const out = await outboundStats(page);
      console.log(`${name} outbound video ${JSON.stringify(out)}`);
      assert.ok(out, `${name}: no publish connection`);
      // Two others subscribed: the server asked for at least one keyframe.
      assert.ok(out.pliCount >= 1, `${name}: the server never sent a keyframe request (PLI)`);
      // Chromium estimates its send bandwidth only from the receiver's congestion feedback.
      assert.ok(
        typeof out.availableOutgoingBitrate === 'number' && out.availableOutgoingBitrate > 0,
        `${name}: no send-side bandwidth estimate; is the server sending TWCC feedback?`,
      );
    }
    const sorted = [...delays].sort((a, b) => a - b);
    const p50 = sorted[Math.ceil(sorted.length / 2) - 1];
    console.log(`join-to-first-frame-ms: p50=${p50} values=[${delays.join(', ')}]`);

    // Bob turns his camera off and on: his button says so, Alice sees his video go and return.
    const camera = people[1].page.getByRole('button', { name: 'Camera', exact: true });
    const bobVideoAtAlice = people[0].page.locator(`[data-participant="${ids[1]}"] video`);
    for (const on of [false, true]) {
      await camera.click();
      // Turning the camera on opens it again (getUserMedia), so the button follows a moment later.
      await waitFor(`Bob's Camera button to be ${on ? 'on' : 'off'}`, async () => {
        const pressed = await camera.getAttribute('aria-pressed');
        return { ok: pressed === String(on), value: { pressed } };
      });
      await waitFor(`Alice to see Bob's camera ${on ? 'on' : 'off'}`, async () => {
        const visible = await bobVideoAtAlice.isVisible();
        return { ok: visible === on, value: { visible } };
      });
    }

    // Carol leaves; Alice and Bob drop her tile.
    const leaver = people[2];
    const leaverId = ids[2];
    const leftAt = Date.now();
    await leaver.page.getByRole('button', { name: 'Leave' }).click();
    for (const { name, page } of people.slice(0, 2)) {
      await waitFor(`${name} to remove ${leaverId}'s tile`, async () => {
        const n = await page.locator(`[data-participant="${leaverId}"]`).count();
        return { ok: n === 0, value: { tiles: n } };
      });
    }
    t.diagnostic(`tiles of the leaver gone after ${Date.now() - leftAt} ms`);
    // The leaver's own view ended when it clicked, whatever the server's goodbye says later.
    await leaver.page.getByText('You left the meeting.').waitFor({ timeout: 5_000 });
    assert.equal(await leaver.page.locator('[data-participant]').count(), 0, 'the leaver shows no tiles');
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, person.name);
    await closeBrowser(browser);
    const exit = await server.stop();
    if (exit !== 0) t.diagnostic(`server exit after SIGTERM: ${exit}`);
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});
