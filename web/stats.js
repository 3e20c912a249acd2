// @ts-check
/**
 * Connection quality from WebRTC statistics, as pure functions over `getStats()` entries: no
 * peer connections and no DOM here. session.js polls the peer connections and feeds the
 * reports in; the tiles show the result (a signal-bars badge and a detail view).
 *
 * What a person can judge: bitrate, packet loss, round-trip time to the server, resolution
 * and frame rate, summed up as good / fair / poor (`rate`, thresholds below), and shown without
 * flapping (`smoothRating`). For another browser's camera the picture counts too: a smaller
 * simulcast layer than its tile asked for (`followLayer`), a low frame rate, a frozen picture.
 */

/** @typedef {'good' | 'fair' | 'poor' | 'unknown'} Rating */

// The thresholds of `rate` (docs/design.md, "Connection quality"). Loss: Opus with in-band FEC
// and video with NACK hide a few percent; above 3 % artefacts and retransmission stalls show,
// above 10 % the call breaks up. Round trip to the server: our leg is one of the two of the
// mouth-to-ear path (publisher to server, server to us), and ITU-T G.114 puts that path's
// comfortable limit at 150 ms one way and its unusable one at 400 ms. 250 ms of round trip
// (about 125 ms one way) takes most of the comfortable budget on our leg alone; at 500 ms the
// other leg and the jitter buffers push the whole past the usable one.
/** Packet loss (percent) above which a connection is fair. */
export const LOSS_FAIR_PERCENT = 3;
/** Packet loss (percent) above which it is poor. */
export const LOSS_POOR_PERCENT = 10;
/** Round trip (ms) above which it is fair. */
export const RTT_FAIR_MS = 250;
/** Round trip (ms) above which it is poor. */
export const RTT_POOR_MS = 500;
/** A moving camera picture below this frame rate is fair (motion turns jerky)... */
export const FPS_FAIR = 12;
/** ...and below this poor (a slide show). */
export const FPS_POOR = 5;
/**
 * A camera picture with fewer lines than this share of what its tile got before for the same
 * request is a reduced layer, and fair: one simulcast step down halves the lines, while a
 * sender's own small adaptation steps (3/4) do not count.
 */
export const FULL_LAYER = 0.75;
/**
 * Loss is judged over at least this many packets of an interval: of fewer (a muted microphone
 * with DTX sends a few a second), one lost packet would read as several percent.
 */
export const MIN_LOSS_PACKETS = 50;
/**
 * How long the page's layer request for a track must stand before the picture is judged against
 * it: the move waits for a keyframe of the new layer (about 1.1 s measured, simulcast.test.js),
 * longer when the publisher must first start encoding a layer it had paused (dynacast).
 */
export const LAYER_SETTLE_MS = 4_000;
/**
 * A better rating is shown once this many samples in a row (2 s apart) say so; a worse one at
 * once. A bad moment is what the person needs to know about now (it explains the frozen
 * picture), while a connection that alternates between loss bursts and clean seconds should
 * read as its worse state instead of blinking at every sample.
 */
export const UP_AFTER = 2;

/**
 * One RTP stream's counters at one moment, from an `inbound-rtp` (what we receive) or an
 * `outbound-rtp` (what we send) entry.
 * @typedef {object} StreamSample
 * @property {string} mid          the transceiver's mid: which track it is
 * @property {'audio' | 'video'} kind
 * @property {number} at           timestamp, ms
 * @property {number} bytes        payload bytes received / sent so far
 * @property {number} packets      packets received / sent so far
 * @property {number} lost         packets lost so far (receiver's count, or the server's report for ours)
 * @property {number} width        last frame size (video), 0 if unknown
 * @property {number} height
 * @property {number} fps          frames per second as the browser measures it, 0 if unknown
 * @property {number} frames       frames decoded so far (received video), 0 otherwise
 * @property {number | null} audioLevel  0..1 (audio), null if unknown
 */

/**
 * What a tile shows about its connection.
 * @typedef {object} Quality
 * @property {Rating} rating
 * @property {number | null} bitrateKbps  video and audio together
 * @property {number | null} lossPercent
 * @property {number | null} rttMs        round trip to the server
 * @property {number} width
 * @property {number} height
 * @property {number} fps
 * @property {number | null} layerRatio  the camera picture's lines against what its tile got
 *   before for the same request (1: all), null when not judged
 * @property {boolean} frozen  a camera picture that should be moving decoded no frame
 * @property {Transport | null} transport  how the media travels to the server
 */

/**
 * How a peer connection reaches the server: straight over UDP, over ICE-TCP, or through a TURN
 * relay (by the way we reach the relay).
 * @typedef {'UDP' | 'TCP' | 'TURN-UDP' | 'TURN-TCP' | 'TURN-TLS'} Transport
 */

/**
 * The transport of a selected candidate pair, from its local candidate's stats entry.
 * @param {any} local  a `local-candidate` entry
 * @returns {Transport | null}
 */
export function transportOf(local) {
  if (!local) return null;
  if (local.candidateType === 'relay') {
    const via = String(local.relayProtocol ?? 'udp').toLowerCase();
    return via === 'tls' ? 'TURN-TLS' : via === 'tcp' ? 'TURN-TCP' : 'TURN-UDP';
  }
  const protocol = String(local.protocol ?? '').toLowerCase();
  return protocol === 'tcp' ? 'TCP' : protocol === 'udp' ? 'UDP' : null;
}

/**
 * Extracts the RTP streams, the current round-trip time and the transport from one
 * `getStats()` report.
 * @param {Iterable<any>} entries  the report's values (`[...report.values()]`)
 * @returns {{streams: Map<string, StreamSample>, rttMs: number | null, transport: Transport | null}}
 */
export function readStats(entries) {
  const all = [...entries];
  /** @type {Map<string, any>} */
  const byId = new Map(all.map((s) => [s.id, s]));
  /** @type {Map<string, StreamSample>} */
  const streams = new Map();
  for (const s of all) {
    if ((s.type !== 'inbound-rtp' && s.type !== 'outbound-rtp') || typeof s.mid !== 'string') continue;
    const inbound = s.type === 'inbound-rtp';
    // Our own streams' loss is what the server reports back about them.
    const remote = inbound ? null : all.find((r) => r.type === 'remote-inbound-rtp' && r.localId === s.id);
    const source = inbound ? null : byId.get(s.mediaSourceId);
    /** @type {StreamSample} */
    const sample = {
      mid: s.mid,
      kind: s.kind === 'audio' ? 'audio' : 'video',
      at: Number(s.timestamp) || 0,
      bytes: Number(inbound ? s.bytesReceived : s.bytesSent) || 0,
      packets: Number(inbound ? s.packetsReceived : s.packetsSent) || 0,
      lost: Number(inbound ? s.packetsLost : remote?.packetsLost) || 0,
      width: Number(s.frameWidth) || 0,
      height: Number(s.frameHeight) || 0,
      fps: Number(s.framesPerSecond) || 0,
      frames: (inbound && Number(s.framesDecoded)) || 0,
      audioLevel: typeof (s.audioLevel ?? source?.audioLevel) === 'number' ? (s.audioLevel ?? source?.audioLevel) : null,
    };
    // Several entries can exist per mid (a restarted sender); keep the busiest.
    const existing = streams.get(sample.mid);
    if (!existing || existing.packets < sample.packets) streams.set(sample.mid, sample);
  }
  const transport = all.find((s) => s.type === 'transport');
  const pair =
    byId.get(transport?.selectedCandidatePairId) ??
    all.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
  const rtt = pair?.currentRoundTripTime;
  return {
    streams,
    rttMs: typeof rtt === 'number' ? Math.round(rtt * 1000) : null,
    transport: transportOf(byId.get(pair?.localCandidateId)),
  };
}

/**
 * How long the selected candidate pair of one `getStats()` report has received nothing, in ms
 * (null when the report does not say). The server sends every subscriber a sender report per
 * track each second, so on a connection that carries any track a silence of seconds means the
 * path is gone, well before the browser's ICE says `disconnected`.
 * @param {Iterable<any>} entries
 * @returns {number | null}
 */
export function pathSilenceMs(entries) {
  const all = [...entries];
  const transport = all.find((s) => s.type === 'transport');
  const pair = all.find((s) => s.id === transport?.selectedCandidatePairId);
  const last = Number(pair?.lastPacketReceivedTimestamp);
  const at = Number(pair?.timestamp);
  if (!pair || !Number.isFinite(last) || !Number.isFinite(at) || last <= 0) return null;
  return Math.max(0, at - last);
}

/**
 * Bitrate and loss between two samples of one stream (null when they cannot be compared:
 * no earlier sample, or the counters went backwards after a restart).
 * @param {StreamSample | undefined} before
 * @param {StreamSample} now
 * @returns {{kbps: number, lost: number, packets: number} | null}
 */
export function streamDelta(before, now) {
  if (!before || now.at <= before.at || now.bytes < before.bytes || now.packets < before.packets) return null;
  const seconds = (now.at - before.at) / 1000;
  return {
    kbps: ((now.bytes - before.bytes) * 8) / 1000 / seconds,
    lost: Math.max(0, now.lost - before.lost),
    packets: now.packets - before.packets,
  };
}

/**
 * good / fair / poor from loss, round trip and, for a camera picture that should be moving, its
 * frame rate, its layer and whether it froze (thresholds above).
 * @param {object} q
 * @param {number | null} q.lossPercent
 * @param {number | null} q.rttMs
 * @param {number | null} q.fps  null: not judged (no moving camera picture)
 * @param {number | null} [q.layerRatio]  null: not judged
 * @param {boolean} [q.frozen]
 * @returns {Rating}
 */
export function rate({ lossPercent, rttMs, fps, layerRatio = null, frozen = false }) {
  if (frozen) return 'poor';
  if (lossPercent === null && rttMs === null) return 'unknown';
  const loss = lossPercent ?? 0;
  const rtt = rttMs ?? 0;
  const moving = fps !== null && fps > 0;
  if (loss > LOSS_POOR_PERCENT || rtt > RTT_POOR_MS || (moving && fps < FPS_POOR)) return 'poor';
  if (loss > LOSS_FAIR_PERCENT || rtt > RTT_FAIR_MS || (moving && fps < FPS_FAIR)) return 'fair';
  if (layerRatio !== null && layerRatio < FULL_LAYER) return 'fair';
  return 'good';
}

/** @type {Record<Rating, number>} */
const RANK = { unknown: -1, poor: 0, fair: 1, good: 2 };

/**
 * What a tile shows: the last shown rating and the run of better samples not shown yet.
 * @typedef {object} Shown
 * @property {Rating} rating
 * @property {Rating | null} better  the worst sample of the run (what it would move up to)
 * @property {number} run  samples in a row better than `rating`
 */

/**
 * The rating to show after one more sample: worse at once, better only after `UP_AFTER`
 * samples in a row, and then to the worst of them. A sample that measured nothing (`unknown`)
 * changes nothing; the first measured one is shown at once. A `partial` sample could not judge
 * everything (a camera whose new layer request has not settled: its picture was not judged),
 * so it may say worse but not better: otherwise a frozen camera whose tile changed size would
 * read good for the few seconds of settling, and poor again after.
 * @param {Shown | undefined} shown
 * @param {Rating} sample
 * @param {boolean} [partial]
 * @returns {Shown}
 */
export function smoothRating(shown, sample, partial = false) {
  if (!shown || shown.rating === 'unknown') return { rating: sample, better: null, run: 0 };
  if (sample === 'unknown') return shown;
  if (RANK[sample] <= RANK[shown.rating]) return { rating: sample, better: null, run: 0 };
  if (partial) return shown;
  const better = shown.better !== null && RANK[shown.better] < RANK[sample] ? shown.better : sample;
  const run = shown.run + 1;
  return run >= UP_AFTER ? { rating: better, better: null, run: 0 } : { rating: shown.rating, better, run };
}

/**
 * What the page remembers of one received camera track between samples, to tell a reduced
 * layer: the layer it asks for and since when, and by requested layer the tallest picture
 * received while that request stood (settled).
 * @typedef {object} LayerMemory
 * @property {number | null} asked
 * @property {number} since  ms
 * @property {number[]} tallest  by requested layer
 */

/**
 * Compares a camera track's decoded picture height with the tallest the same request (or a
 * smaller one) brought before: a larger request never legitimately brings a smaller picture.
 * Only the height is used, so this holds however the server picks its layers. What it cannot
 * know: a picture that was reduced from the start (there is nothing taller to compare with),
 * and a publisher that switched to a smaller camera (reads as reduced until the page forgets,
 * when that camera is turned off).
 * @param {LayerMemory | undefined} memory  from the previous sample
 * @param {number | null | undefined} asked  the layer the page asks for now (null: paused,
 *   undefined: not asked yet)
 * @param {number} height  decoded frame height now, 0 if unknown
 * @param {number} now  ms
 * @returns {{memory: LayerMemory, ratio: number | null, settled: boolean}}  `ratio` null when
 *   not judged; `settled`: frames of the requested layer should be arriving
 */
export function followLayer(memory, asked, height, now) {
  const request = asked ?? null;
  if (!memory || memory.asked !== request) {
    return { memory: { asked: request, since: now, tallest: memory?.tallest ?? [] }, ratio: null, settled: false };
  }
  const settled = request !== null && now - memory.since >= LAYER_SETTLE_MS;
  if (!settled || request === null || height <= 0) return { memory, ratio: null, settled };
  const tallest = [...memory.tallest];
  tallest[request] = Math.max(tallest[request] ?? 0, height);
  let reference = 0;
  for (let layer = 0; layer <= request; layer++) reference = Math.max(reference, tallest[layer] ?? 0);
  return { memory: { ...memory, tallest }, ratio: Math.min(1, height / reference), settled };
}

/**
 * A tile's quality from the streams it shows (its video and audio), each as a pair of samples.
 * @param {Array<{before: StreamSample | undefined, now: StreamSample}>} streams
 * @param {number | null} rttMs
 * @param {Transport | null} [transport]  of the connection the streams come over
 * @param {{live?: boolean, layerRatio?: number | null}} [camera]  for a browser's camera:
 *   `live` when its picture should be moving (on, asked for, settled on its layer), so that a
 *   low frame rate or a frozen picture is the connection's doing; a screen share is slow
 *   whenever the screen is still, and a bridged camera runs at whatever rate it is set to.
 *   `layerRatio` from `followLayer`. (A camera that is on but still settling is judged on loss
 *   and round trip only: its sample is partial, see `smoothRating`.)
 * @returns {Quality}
 */
export function tileQuality(streams, rttMs, transport = null, camera = {}) {
  const live = camera.live ?? false;
  const layerRatio = camera.layerRatio ?? null;
  let kbps = 0;
  let lost = 0;
  let packets = 0;
  let measured = false;
  let width = 0;
  let height = 0;
  let fps = 0;
  let frozen = false;
  for (const { before, now } of streams) {
    const d = streamDelta(before, now);
    if (d) {
      measured = true;
      kbps += d.kbps;
      lost += d.lost;
      packets += d.packets;
    }
    if (now.kind === 'video') {
      width = now.width;
      height = now.height;
      fps = now.fps;
      // A picture that stood still, not one that never started (the tile shows its placeholder).
      if (live && d && before && before.frames > 0 && now.frames === before.frames) frozen = true;
    }
  }
  const lossPercent = measured && lost + packets >= MIN_LOSS_PACKETS ? (100 * lost) / (lost + packets) : null;
  return {
    rating: rate({ lossPercent, rttMs, fps: live ? fps : null, layerRatio: live ? layerRatio : null, frozen }),
    bitrateKbps: measured ? Math.round(kbps) : null,
    lossPercent: lossPercent === null ? null : Math.round(lossPercent * 10) / 10,
    rttMs,
    width,
    height,
    fps: Math.round(fps),
    layerRatio: live ? layerRatio : null,
    frozen,
    transport,
  };
}

/**
 * The quality as a short line of text, e.g.
 * "1.2 Mbit/s · 0.5% loss · 24 ms round trip · 640×480 · 30 fps · via TCP", with what made a
 * camera picture worse at the end ("picture frozen", "smaller picture than asked for").
 * @param {Quality} q
 */
export function describeQuality(q) {
  const parts = [];
  if (q.bitrateKbps !== null) {
    parts.push(q.bitrateKbps >= 1000 ? `${(q.bitrateKbps / 1000).toFixed(1)} Mbit/s` : `${q.bitrateKbps} kbit/s`);
  }
  if (q.lossPercent !== null) parts.push(`${q.lossPercent}% loss`);
  if (q.rttMs !== null) parts.push(`${q.rttMs} ms round trip`);
  if (q.width > 0 && q.height > 0) parts.push(`${q.width}×${q.height}`);
  if (q.fps > 0) parts.push(`${q.fps} fps`);
  if (q.transport) parts.push(`via ${q.transport}`);
  if (q.frozen) parts.push('picture frozen');
  else if (q.layerRatio !== null && q.layerRatio < FULL_LAYER) parts.push('smaller picture than asked for');
  return parts.join(' · ');
}
