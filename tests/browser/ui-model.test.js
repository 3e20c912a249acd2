// @ts-check
/**
 * Unit tests of the web client's pure parts, in Node without a browser: tile geometry
 * (layout.js), connection quality (stats.js), which remote track is a camera or a screen
 * share (protocol.js), reconnect pacing (session.js) and the recent rooms list (recent.js).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fitGrid, gridRects, layoutTiles } from '../../web/layout.js';
import { msidsByMid, trackSources } from '../../web/protocol.js';
import { loadRecent, timeAgo, withRecent, withoutRecent } from '../../web/recent.js';
import { GIVE_UP_AFTER_MS, reconnectDelay, tileKey } from '../../web/session.js';
import { describeQuality, pathSilenceMs, rate, readStats, tileQuality, transportOf } from '../../web/stats.js';

/** @typedef {import('../../web/layout.js').Rect} Rect */

/**
 * @param {Rect} a
 * @param {Rect} b
 */
const overlap = (a, b) =>
  a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;

test('1 to 25 tiles fit a desktop stage without overlapping or leaving it', () => {
  for (const [width, height] of [[1280, 690], [1920, 960], [900, 560]]) {
    for (let count = 1; count <= 25; count++) {
      const rects = layoutTiles({ count, width, height });
      assert.equal(rects.length, count);
      for (const r of rects) {
        assert.ok(r.x >= 0 && r.y >= 0 && r.x + r.width <= width + 0.5 && r.y + r.height <= height + 0.5,
          `${count} tiles in ${width}x${height}: ${JSON.stringify(r)} is outside`);
        const aspect = r.width / r.height;
        assert.ok(aspect >= 4 / 3 - 0.02 && aspect <= 16 / 9 + 0.02, `aspect ${aspect} for ${count} tiles`);
      }
      for (let i = 0; i < rects.length; i++) {
        for (let j = i + 1; j < rects.length; j++) {
          assert.ok(!overlap(rects[i], rects[j]), `${count} tiles: ${i} and ${j} overlap`);
        }
      }
      // Reasonably large: the tiles cover a fair share of the stage.
      const area = rects.reduce((sum, r) => sum + r.width * r.height, 0);
      assert.ok(area / (width * height) > 0.4, `${count} tiles cover only ${Math.round((100 * area) / (width * height))}%`);
    }
  }
});

test('a phone held upright gets upright tiles: four people in two by two', () => {
  const fit = fitGrid(4, 378, 700, { gap: 6, min: 9 / 16, max: 16 / 9 });
  assert.deepEqual([fit.cols, fit.rows], [2, 2]);
  assert.ok(fit.height > fit.width, JSON.stringify(fit));
  const rects = layoutTiles({ count: 4, width: 378, height: 700, gap: 6 });
  for (const r of rects) assert.ok(r.x + r.width <= 378 && r.y + r.height <= 700);
});

test('the last, shorter row is centred', () => {
  const rects = gridRects(5, { x: 0, y: 0, width: 1000, height: 600 }, { gap: 10 });
  const ys = [...new Set(rects.map((r) => r.y))];
  assert.ok(ys.length >= 2, JSON.stringify(rects));
  const last = rects.filter((r) => r.y === ys[ys.length - 1]);
  const first = rects.filter((r) => r.y === ys[0]);
  assert.ok(last.length < first.length, 'the last row is shorter');
  const left = last[0].x;
  const end = last[last.length - 1];
  const right = 1000 - end.x - end.width;
  assert.ok(Math.abs(left - right) <= 1, `left ${left} right ${right}`);
});

test('spotlight: one tile large, the others in a strip beside it (landscape) or below (portrait)', () => {
  const wide = layoutTiles({ count: 5, width: 1200, height: 700, spotlight: 2 });
  const main = wide[2];
  assert.ok(main.width > 800 && main.height === 700, JSON.stringify(main));
  for (const [i, r] of wide.entries()) {
    if (i !== 2) assert.ok(r.x >= main.x + main.width && !overlap(r, main), `tile ${i} ${JSON.stringify(r)}`);
  }
  const tall = layoutTiles({ count: 3, width: 390, height: 700, spotlight: 0 });
  assert.ok(tall[0].width === 390 && tall[0].height > 450, JSON.stringify(tall[0]));
  for (const r of tall.slice(1)) assert.ok(r.y >= tall[0].y + tall[0].height, JSON.stringify(r));
  assert.deepEqual(layoutTiles({ count: 1, width: 800, height: 600, spotlight: 0 }), [{ x: 0, y: 0, width: 800, height: 600 }]);
});

test('camera, screen share and its sound are told apart by the order the server lists them', () => {
  const p = /** @type {const} */ ({
    kind: 'browser',
    tracks: [
      { id: 'bob-a3', kind: 'audio', codec: 'opus' },
      { id: 'bob-v4', kind: 'video', codec: 'H264' },
      { id: 'bob-v7', kind: 'video', codec: 'H264' },
      { id: 'bob-a8', kind: 'audio', codec: 'opus' },
    ],
  });
  const sources = trackSources({ kind: p.kind, tracks: [...p.tracks] }, []);
  assert.deepEqual(Object.fromEntries(sources), {
    'bob-a3': 'microphone',
    'bob-v4': 'camera',
    'bob-v7': 'screen',
    'bob-a8': 'screen-audio',
  });
  // Tracks the announcement does not list yet go after it, by the server's counter.
  const early = trackSources({ kind: 'browser', tracks: [{ id: 'bob-v4', kind: 'video', codec: 'H264' }] }, [
    { id: 'bob-a12', kind: 'audio' },
    { id: 'bob-v11', kind: 'video' },
    { id: 'bob-v4', kind: 'video' },
  ]);
  assert.deepEqual(Object.fromEntries(early), { 'bob-v4': 'camera', 'bob-v11': 'screen', 'bob-a12': 'screen-audio' });
  // Nothing announced yet: the first video is the camera.
  assert.equal(trackSources(undefined, [{ id: 'x-v2', kind: 'video' }]).get('x-v2'), 'camera');
  // A bridged camera has only a camera and a microphone, however many tracks.
  const cam = trackSources({ kind: 'camera', tracks: [] }, [{ id: 'c-v1', kind: 'video' }, { id: 'c-a2', kind: 'audio' }]);
  assert.deepEqual(Object.fromEntries(cam), { 'c-v1': 'camera', 'c-a2': 'microphone' });
});

test('msids by mid: publisher, server track id and whether the section is active', () => {
  const sdp = [
    'v=0', 'o=- 1 1 IN IP4 0.0.0.0', 's=-', 't=0 0',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:0', 'a=sendonly', 'a=msid:bob bob-a3',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:1', 'a=sendonly', 'a=msid:bob bob-v4',
    'm=video 0 UDP/TLS/RTP/SAVPF 96', 'a=mid:2', 'a=msid:carol carol-v9',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:3', 'a=inactive', 'a=msid:dan dan-v2',
    '',
  ].join('\r\n');
  assert.deepEqual([...msidsByMid(sdp)], [
    ['0', { stream: 'bob', track: 'bob-a3', active: true }],
    ['1', { stream: 'bob', track: 'bob-v4', active: true }],
    ['2', { stream: 'carol', track: 'carol-v9', active: false }],
    ['3', { stream: 'dan', track: 'dan-v2', active: false }],
  ]);
});

test('quality from getStats: bitrate, loss, round trip, resolution and a rating', () => {
  const report = (/** @type {number} */ t, /** @type {number} */ bytes, /** @type {number} */ packets, /** @type {number} */ lost) => [
    { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' },
    { id: 'CP', type: 'candidate-pair', currentRoundTripTime: 0.042, nominated: true, state: 'succeeded' },
    { id: 'IV', type: 'inbound-rtp', kind: 'video', mid: '1', timestamp: t, bytesReceived: bytes, packetsReceived: packets, packetsLost: lost, frameWidth: 640, frameHeight: 360, framesPerSecond: 30 },
    { id: 'IA', type: 'inbound-rtp', kind: 'audio', mid: '0', timestamp: t, bytesReceived: bytes / 10, packetsReceived: packets, packetsLost: 0, audioLevel: 0.3 },
  ];
  const a = readStats(report(1000, 100_000, 1000, 0));
  const b = readStats(report(3000, 350_000, 1200, 10));
  assert.equal(b.rttMs, 42);
  assert.equal(b.streams.get('0')?.audioLevel, 0.3);
  const q = tileQuality(
    ['0', '1'].map((mid) => ({ before: a.streams.get(mid), now: /** @type {any} */ (b.streams.get(mid)) })),
    b.rttMs,
  );
  // (250 000 + 25 000) bytes in 2 s = 1100 kbit/s; 10 lost of 410.
  assert.equal(q.bitrateKbps, 1100);
  assert.equal(q.lossPercent, 2.4);
  assert.deepEqual([q.width, q.height, q.fps, q.rating], [640, 360, 30, 'good']);
  assert.match(describeQuality(q), /^1\.1 Mbit\/s · 2\.4% loss · 42 ms round trip · 640×360 · 30 fps$/);
  assert.equal(rate({ lossPercent: 5, rttMs: 40, fps: 30 }), 'fair');
  assert.equal(rate({ lossPercent: 0, rttMs: 800, fps: 30 }), 'poor');
  assert.equal(rate({ lossPercent: 0, rttMs: 20, fps: 3 }), 'poor');
  assert.equal(rate({ lossPercent: 0, rttMs: 20, fps: 9 }), 'fair');
  assert.equal(rate({ lossPercent: null, rttMs: null, fps: null }), 'unknown');
  // The transport, from the selected pair's local candidate.
  const viaTcp = readStats([
    { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' },
    { id: 'CP', type: 'candidate-pair', currentRoundTripTime: 0.02, localCandidateId: 'L' },
    { id: 'L', type: 'local-candidate', protocol: 'tcp', candidateType: 'prflx' },
  ]);
  assert.equal(viaTcp.transport, 'TCP');
  assert.match(describeQuality(tileQuality([], viaTcp.rttMs, viaTcp.transport)), /20 ms round trip · via TCP$/);
  assert.equal(transportOf({ candidateType: 'relay', relayProtocol: 'tls', protocol: 'udp' }), 'TURN-TLS');
  assert.equal(transportOf({ candidateType: 'relay', protocol: 'udp' }), 'TURN-UDP');
  assert.equal(transportOf({ candidateType: 'host', protocol: 'udp' }), 'UDP');
  assert.equal(transportOf(undefined), null);
  assert.equal(b.transport, null, 'no local candidate in the report: unknown');
  // Silence on the selected pair.
  const pairAt = (/** @type {number} */ last) => [
    { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' },
    { id: 'CP', type: 'candidate-pair', timestamp: 10_000, lastPacketReceivedTimestamp: last },
  ];
  assert.equal(pathSilenceMs(pairAt(9_600)), 400);
  assert.equal(pathSilenceMs(pairAt(0)), null, 'nothing received yet');
  assert.equal(pathSilenceMs([]), null);
  // No earlier sample: nothing to compute a rate from.
  const first = tileQuality([{ before: undefined, now: /** @type {any} */ (a.streams.get('1')) }], 10);
  assert.equal(first.bitrateKbps, null);
});

test('reconnecting: quick first attempts, then every 8 s; tiles keyed by participant and source', () => {
  const delays = Array.from({ length: 8 }, (_, i) => reconnectDelay(i, () => 0.5));
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000, 8000]);
  assert.ok(reconnectDelay(0, () => 0) >= 400 && reconnectDelay(0, () => 1) <= 600);
  assert.ok(GIVE_UP_AFTER_MS >= 20_000, 'a server restart fits in the window');
  assert.equal(tileKey('bob', 'microphone'), 'bob:camera');
  assert.equal(tileKey('bob', 'screen-audio'), 'bob:screen');
});

test('recent rooms: newest first, unique, at most 8, garbage ignored', () => {
  /** @type {Map<string, string>} */
  const data = new Map();
  const storage = { getItem: (/** @type {string} */ k) => data.get(k) ?? null };
  let list = loadRecent(storage);
  for (let i = 0; i < 10; i++) list = withRecent(list, `room-${i}`, i);
  list = withRecent(list, 'room-5', 100);
  assert.deepEqual(list.map((r) => r.name), ['room-5', 'room-9', 'room-8', 'room-7', 'room-6', 'room-4', 'room-3', 'room-2']);
  assert.deepEqual(withoutRecent(list, 'room-9').map((r) => r.name)[1], 'room-8');
  data.set('confab.recentRooms', JSON.stringify([{ name: 'ok', at: 1 }, { name: 'bad name', at: 2 }, 7, null]));
  assert.deepEqual(loadRecent(storage), [{ name: 'ok', at: 1 }]);
  data.set('confab.recentRooms', '{not json');
  assert.deepEqual(loadRecent(storage), []);
  assert.equal(timeAgo(0, 30_000), 'just now');
  assert.equal(timeAgo(0, 5 * 60_000), '5 min ago');
  assert.equal(timeAgo(0, 3 * 3_600_000), '3 h ago');
});
