// @ts-check
/**
 * Unit tests of the connection-quality indicator's model (stats.js), in Node without a browser:
 * the rating's thresholds, its smoothing (no flapping), a camera's layer compared with what
 * its tile asked for, and a frozen picture. The page side is quality.test.js.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  followLayer,
  LAYER_SETTLE_MS,
  rate,
  readStats,
  smoothRating,
  tileQuality,
} from '../../web/stats.js';

/** @typedef {import('../../web/stats.js').Rating} Rating */
/** @typedef {import('../../web/stats.js').StreamSample} StreamSample */

test('rating: loss, round trip, frame rate, layer and a frozen picture, each at its threshold', () => {
  /** @type {Parameters<typeof rate>[0]} */
  const fine = { lossPercent: 0, rttMs: 20, fps: 30, layerRatio: 1, frozen: false };
  /** @type {Array<[string, Partial<typeof fine>, Rating]>} */
  const cases = [
    ['all fine', {}, 'good'],
    ['3 % loss', { lossPercent: 3 }, 'good'],
    ['3.1 % loss', { lossPercent: 3.1 }, 'fair'],
    ['10 % loss', { lossPercent: 10 }, 'fair'],
    ['10.1 % loss', { lossPercent: 10.1 }, 'poor'],
    ['250 ms', { rttMs: 250 }, 'good'],
    ['251 ms', { rttMs: 251 }, 'fair'],
    ['500 ms', { rttMs: 500 }, 'fair'],
    ['501 ms', { rttMs: 501 }, 'poor'],
    ['12 fps', { fps: 12 }, 'good'],
    ['11 fps', { fps: 11 }, 'fair'],
    ['4 fps', { fps: 4 }, 'poor'],
    ['frame rate not known', { fps: 0 }, 'good'],
    ['frame rate not judged (a screen share)', { fps: null }, 'good'],
    ['three quarters of the lines', { layerRatio: 0.75 }, 'good'],
    ['one layer down', { layerRatio: 0.5 }, 'fair'],
    ['two layers down, nothing else wrong', { layerRatio: 0.25 }, 'fair'],
    ['layer not judged', { layerRatio: null }, 'good'],
    ['frozen', { frozen: true }, 'poor'],
    ['frozen, nothing else measured', { lossPercent: null, rttMs: null, frozen: true }, 'poor'],
    ['nothing measured', { lossPercent: null, rttMs: null }, 'unknown'],
    ['the worst wins: poor loss with a reduced layer', { lossPercent: 12, layerRatio: 0.5 }, 'poor'],
  ];
  for (const [what, change, expected] of cases) {
    assert.equal(rate({ ...fine, ...change }), expected, what);
  }
});

/**
 * The ratings a tile shows for a series of samples.
 * @param {Rating[]} samples
 */
function shownFor(samples) {
  /** @type {import('../../web/stats.js').Shown | undefined} */
  let shown;
  return samples.map((s) => {
    shown = smoothRating(shown, s);
    return shown.rating;
  });
}

test('smoothing: worse at once, better only after two samples in a row, to the worst of them', () => {
  // The first measurement shows at once, a drop too.
  assert.deepEqual(shownFor(['good', 'poor']), ['good', 'poor']);
  // Up takes two samples in a row.
  assert.deepEqual(shownFor(['poor', 'good', 'good', 'good']), ['poor', 'poor', 'good', 'good']);
  // A connection that alternates reads as its worse state instead of blinking.
  assert.deepEqual(shownFor(['good', 'fair', 'good', 'fair', 'good', 'fair']), ['good', 'fair', 'fair', 'fair', 'fair', 'fair']);
  // Up by the worse of the run: poor, then fair and good, shows fair.
  assert.deepEqual(shownFor(['poor', 'fair', 'good', 'good']), ['poor', 'poor', 'fair', 'fair']);
  assert.deepEqual(shownFor(['poor', 'good', 'fair', 'good', 'good']), ['poor', 'poor', 'fair', 'fair', 'good']);
  // A sample that measured nothing changes nothing, and does not break a run.
  assert.deepEqual(shownFor(['fair', 'unknown', 'good', 'unknown', 'good']), ['fair', 'fair', 'fair', 'fair', 'good']);
  assert.deepEqual(shownFor(['unknown', 'unknown', 'fair']), ['unknown', 'unknown', 'fair']);
});

test('smoothing: a partial sample (a camera still settling on its layer) may say worse, never better', () => {
  /**
   * @param {Array<[Rating, boolean]>} samples  rating and whether partial
   */
  const shown = (samples) => {
    /** @type {import('../../web/stats.js').Shown | undefined} */
    let s;
    return samples.map(([rating, partial]) => {
      s = smoothRating(s, rating, partial);
      return s.rating;
    });
  };
  // A frozen camera whose tile changed size: its settling samples judge loss and round trip
  // only, which read good; the indicator stays poor until the picture is judged again.
  assert.deepEqual(
    shown([['poor', false], ['good', true], ['good', true], ['poor', false], ['good', false], ['good', false]]),
    ['poor', 'poor', 'poor', 'poor', 'poor', 'good'],
  );
  // Worse shows at once even while settling; the first sample shows whatever it says.
  assert.deepEqual(shown([['good', true], ['fair', true], ['good', false], ['good', false]]), ['good', 'fair', 'fair', 'good']);
});

test('layer: a smaller picture than the same request brought before is reduced, a smaller request is not', () => {
  /** @type {import('../../web/stats.js').LayerMemory | undefined} */
  let memory;
  let t = 0;
  /**
   * One sample, 2 s after the previous one.
   * @param {number | null | undefined} asked
   * @param {number} height
   */
  const sample = (asked, height) => {
    t += 2_000;
    const r = followLayer(memory, asked, height, t);
    memory = r.memory;
    return { ratio: r.ratio, settled: r.settled };
  };
  // Not asked yet, then the full layer: judged once the request has stood LAYER_SETTLE_MS.
  assert.deepEqual(sample(undefined, 180), { ratio: null, settled: false });
  assert.deepEqual(sample(2, 180), { ratio: null, settled: false });
  assert.ok(LAYER_SETTLE_MS <= 4_000, 'the tests below assume two samples settle a request');
  assert.deepEqual(sample(2, 360), { ratio: null, settled: false });
  assert.deepEqual(sample(2, 720), { ratio: 1, settled: true });
  // The network cannot carry the full picture: the server sends the half one.
  assert.deepEqual(sample(2, 360), { ratio: 0.5, settled: true });
  assert.deepEqual(sample(2, 720), { ratio: 1, settled: true });
  // The tile shrinks and asks for the quarter picture: the full one still comes until the
  // switch, and is not taken as what the quarter request brings.
  assert.deepEqual(sample(0, 720), { ratio: null, settled: false });
  assert.deepEqual(sample(0, 720), { ratio: null, settled: false });
  assert.deepEqual(sample(0, 180), { ratio: 1, settled: true });
  // Paused (the tile out of view): not judged, and nothing is forgotten.
  assert.deepEqual(sample(null, 180), { ratio: null, settled: false });
  assert.deepEqual(sample(null, 0), { ratio: null, settled: false });
  // Large again: the half picture is reduced against the full one seen before.
  sample(2, 180);
  sample(2, 360);
  assert.deepEqual(sample(2, 360), { ratio: 0.5, settled: true });
  // No picture height yet: not judged.
  assert.deepEqual(sample(2, 0), { ratio: null, settled: true });
});

test('layer: a publisher with two layers gives a middle request the small one, which is not reduced', () => {
  // 480 lines sent as 240 and 480; the server answers a request for layer 1 with layer 0.
  let r = followLayer(undefined, 1, 240, 0);
  r = followLayer(r.memory, 1, 240, LAYER_SETTLE_MS);
  assert.equal(r.ratio, 1);
  r = followLayer(r.memory, 2, 480, LAYER_SETTLE_MS + 2_000);
  r = followLayer(r.memory, 2, 480, 2 * LAYER_SETTLE_MS + 2_000);
  assert.equal(r.ratio, 1);
  // Back to the middle request: what layer 2 brought is not what layer 1 may expect.
  r = followLayer(r.memory, 1, 240, 3 * LAYER_SETTLE_MS);
  r = followLayer(r.memory, 1, 240, 4 * LAYER_SETTLE_MS);
  assert.equal(r.ratio, 1);
});

/**
 * A subscribe connection's stats report with one camera (video and audio).
 * @param {{t: number, packets: number, lost: number, frames: number, height?: number, rtt?: number}} s
 */
function report({ t, packets, lost, frames, height = 720, rtt = 0.004 }) {
  return readStats([
    { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' },
    { id: 'CP', type: 'candidate-pair', currentRoundTripTime: rtt },
    {
      id: 'IV', type: 'inbound-rtp', kind: 'video', mid: '1', timestamp: t, bytesReceived: packets * 1000,
      packetsReceived: packets, packetsLost: lost, frameWidth: (height * 16) / 9, frameHeight: height,
      framesPerSecond: 30, framesDecoded: frames,
    },
    { id: 'IA', type: 'inbound-rtp', kind: 'audio', mid: '0', timestamp: t, bytesReceived: 0, packetsReceived: 0, packetsLost: 0 },
  ]);
}

/**
 * The camera tile's quality between two reports.
 * @param {ReturnType<typeof report>} a
 * @param {ReturnType<typeof report>} b
 * @param {{live?: boolean, layerRatio?: number | null}} [camera]
 */
function between(a, b, camera) {
  const streams = ['0', '1'].map((mid) => ({ before: a.streams.get(mid), now: /** @type {StreamSample} */ (b.streams.get(mid)) }));
  return tileQuality(streams, b.rttMs, null, camera);
}

test('frozen: a live camera whose decoder stood still is poor; a paused one, or one not yet started, is not', () => {
  const a = report({ t: 0, packets: 1000, lost: 0, frames: 500 });
  const stuck = report({ t: 2_000, packets: 1200, lost: 0, frames: 500 });
  const q = between(a, stuck, { live: true, layerRatio: 1 });
  assert.deepEqual([q.frozen, q.rating], [true, 'poor']);
  assert.match(`${q.lossPercent}% · ${q.rttMs} ms`, /^0% · 4 ms$/);
  // Not live (paused by the page, camera off, a screen share, a bridged camera): not frozen.
  assert.deepEqual([between(a, stuck, { live: false }).frozen, between(a, stuck).rating], [false, 'good']);
  // A picture that never started is not frozen.
  const never = between(report({ t: 0, packets: 1000, lost: 0, frames: 0 }), report({ t: 2_000, packets: 1200, lost: 0, frames: 0 }), { live: true });
  assert.equal(never.frozen, false);
  // Moving: good.
  const moving = between(a, report({ t: 2_000, packets: 1200, lost: 0, frames: 560 }), { live: true, layerRatio: 1 });
  assert.deepEqual([moving.frozen, moving.rating], [false, 'good']);
  // A reduced layer counts only for a live camera.
  assert.equal(between(a, report({ t: 2_000, packets: 1200, lost: 0, frames: 560 }), { live: true, layerRatio: 0.5 }).rating, 'fair');
  assert.equal(between(a, report({ t: 2_000, packets: 1200, lost: 0, frames: 560 }), { live: false, layerRatio: 0.5 }).rating, 'good');
});

test('loss is judged over enough packets only, and the rating of a series moves without flapping', () => {
  // One lost of ten is not "10 % loss": too few packets to tell.
  const few = between(report({ t: 0, packets: 100, lost: 0, frames: 1 }), report({ t: 2_000, packets: 109, lost: 1, frames: 2 }));
  assert.equal(few.lossPercent, null);
  // A loss burst in one interval out of a series of clean ones.
  const lostTotals = [0, 0, 30, 30, 30, 30];
  const reports = lostTotals.map((lost, i) => report({ t: i * 2_000, packets: 1000 + i * 200 - lost, lost, frames: 1 + i * 60 }));
  /** @type {import('../../web/stats.js').Shown | undefined} */
  let shown;
  const series = [];
  for (let i = 1; i < reports.length; i++) {
    const q = between(reports[i - 1], reports[i], { live: true, layerRatio: 1 });
    shown = smoothRating(shown, q.rating);
    series.push(`${q.rating}/${shown.rating}`);
  }
  // 30 of 200 lost (15 %): poor at once; clean again: shown good after two clean samples.
  assert.deepEqual(series, ['good/good', 'poor/poor', 'good/poor', 'good/good', 'good/good']);
});
