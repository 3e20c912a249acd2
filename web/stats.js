// @ts-check
/**
 * Connection quality from WebRTC statistics, as pure functions over `getStats()` entries: no
 * peer connections and no DOM here. session.js polls the peer connections and feeds the
 * reports in; the tiles show the result (a signal-bars badge and a detail view).
 *
 * What a person can judge: bitrate, packet loss, round-trip time to the server, resolution
 * and frame rate, summed up as good / fair / poor. The thresholds are the usual ones for
 * interactive video (loss above a few percent shows as artefacts, round trips above a few
 * hundred milliseconds make talking over each other likely).
 */

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
 * @property {number | null} audioLevel  0..1 (audio), null if unknown
 */

/**
 * What a tile shows about its connection.
 * @typedef {object} Quality
 * @property {'good' | 'fair' | 'poor' | 'unknown'} rating
 * @property {number | null} bitrateKbps  video and audio together
 * @property {number | null} lossPercent
 * @property {number | null} rttMs        round trip to the server
 * @property {number} width
 * @property {number} height
 * @property {number} fps
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
 * good / fair / poor from loss, round trip and (for video that should be moving) frame rate.
 * @param {{lossPercent: number | null, rttMs: number | null, fps: number | null}} q
 * @returns {Quality['rating']}
 */
export function rate({ lossPercent, rttMs, fps }) {
  if (lossPercent === null && rttMs === null) return 'unknown';
  const loss = lossPercent ?? 0;
  const rtt = rttMs ?? 0;
  if (loss > 10 || rtt > 500 || (fps !== null && fps > 0 && fps < 5)) return 'poor';
  if (loss > 3 || rtt > 250 || (fps !== null && fps > 0 && fps < 12)) return 'fair';
  return 'good';
}

/**
 * A tile's quality from the streams it shows (its video and audio), each as a pair of samples.
 * @param {Array<{before: StreamSample | undefined, now: StreamSample}>} streams
 * @param {number | null} rttMs
 * @param {Transport | null} [transport]  of the connection the streams come over
 * @returns {Quality}
 */
export function tileQuality(streams, rttMs, transport = null) {
  let kbps = 0;
  let lost = 0;
  let packets = 0;
  let measured = false;
  let width = 0;
  let height = 0;
  let fps = 0;
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
    }
  }
  const lossPercent = measured && lost + packets > 0 ? (100 * lost) / (lost + packets) : measured ? 0 : null;
  const hasVideo = streams.some((s) => s.now.kind === 'video');
  return {
    rating: rate({ lossPercent, rttMs, fps: hasVideo ? fps : null }),
    bitrateKbps: measured ? Math.round(kbps) : null,
    lossPercent: lossPercent === null ? null : Math.round(lossPercent * 10) / 10,
    rttMs,
    width,
    height,
    fps: Math.round(fps),
    transport,
  };
}

/**
 * The quality as a short line of text, e.g.
 * "1.2 Mbit/s · 0.5% loss · 24 ms round trip · 640×480 · 30 fps · via TCP".
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
  return parts.join(' · ');
}
