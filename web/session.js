// @ts-check
/**
 * One person's stay in a meeting, across connections: joins with a `ConfabClient`, and when
 * the connection drops (the socket closes, the server restarts, the network changes, a peer
 * connection fails) joins again with the same name, identity and media, without a page reload.
 * If the server stays unreachable it gives up after a while and says so; `retry()` starts
 * over. It also polls the connection statistics for the tiles (quality).
 *
 * No DOM here: room.js draws what the events say.
 *
 * Events (`CustomEvent`s, payload in `detail`):
 * - `client`: `{client}` — a new connection is about to join (listen to it now)
 * - `joined`: `{id, participants, reconnected, role, locked}` — in the room (again)
 * - `reconnecting`: `{attempt, delayMs, reason, offline}` — the connection is gone; the next
 *   attempt starts in `delayMs`
 * - `failed`: `{reason, media}` — gave up reconnecting; `retry()` tries again. With `media`
 *   true, the signaling worked but audio and video never got through (our network blocks
 *   them): not retried by itself, since it would fail the same way
 * - `ice-restart`: `{reason}` — media lost its path and is looking for a new one (an ICE
 *   restart; the session stays in the room)
 * - `ended`: `{reason, removed}` — over for good: the user left, the server refused us, or
 *   (`removed`) an operator took us out or ended the meeting
 * - `muted`: `{kind, by}` — operator `by` turned our microphone or camera off (done already)
 * - `quality`: `{quality: Map<string, Quality>}` — connection quality per tile key, every 2 s;
 *   its `rating` smoothed (`smoothRating`: worse at once, better after two samples)
 *
 * Tile keys are `{participant id}:camera` and `{participant id}:screen`.
 */
import { ConfabClient, ConfabError } from './protocol.js';
import { followLayer, pathSilenceMs, readStats, smoothRating, tileQuality } from './stats.js';

/** @typedef {import('./protocol.js').Source} Source */
/** @typedef {import('./protocol.js').ParticipantInfo} ParticipantInfo */
/** @typedef {import('./stats.js').Quality} Quality */
/** @typedef {import('./stats.js').StreamSample} StreamSample */
/** @typedef {import('./media.js').LocalMedia} LocalMedia */

/** Join errors that another attempt cannot fix. */
const FATAL_CODES = new Set([
  'bad_room',
  'bad_name',
  'room_full',
  'already_joined',
  'auth_required',
  'token_required',
  'bad_credentials',
  'room_locked',
  'forbidden',
]);
/** Reconnecting stops after this long without success (the server is gone, not restarting). */
export const GIVE_UP_AFTER_MS = 30_000;
const LEVELS_EVERY_MS = 500;
/** Silence on a subscribe connection that carries tracks after which its path counts as lost
 * (the server sends a sender report per track every second). */
const PATH_SILENCE_MS = 2_000;
const QUALITY_EVERY_MS = 2_000;

/**
 * The wait before reconnect attempt `attempt` (0-based): quick at first, since most drops
 * are a restart or a blip, then every 8 s. A little jitter keeps a room that lost its server
 * from coming back all in the same millisecond.
 * @param {number} attempt
 * @param {() => number} [random]
 */
export function reconnectDelay(attempt, random = Math.random) {
  const base = Math.min(8_000, 500 * 2 ** attempt);
  return Math.round(base * (0.85 + 0.3 * random()));
}

/**
 * The tile a track is shown on.
 * @param {string} participant
 * @param {Source} source
 */
export function tileKey(participant, source) {
  return `${participant}:${source === 'screen' || source === 'screen-audio' ? 'screen' : 'camera'}`;
}

export class MeetingSession extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.room
   * @param {string} options.name
   * @param {LocalMedia} options.media
   * @param {string} [options.identity]
   * @param {() => MediaStreamTrack | null} [options.placeholder]
   * @param {string} [options.url]  signaling URL (default: this page's `/ws`)
   * @param {string} [options.password]  the room password; kept (in memory only) to rejoin
   * @param {string} [options.token]  a join token; kept to rejoin
   */
  constructor({ room, name, media, identity, placeholder, url, password, token }) {
    super();
    this.room = room;
    this.name = name;
    this.media = media;
    this.identity = identity;
    this.password = password;
    this.token = token;
    /** @type {import('./protocol.js').Role} as the last `joined` said */
    this.role = 'presenter';
    this.placeholder = placeholder;
    this.url = url;
    /** @type {ConfabClient | null} */
    this.client = null;
    /** @type {'idle' | 'joining' | 'joined' | 'reconnecting' | 'failed' | 'ended'} */
    this.state = 'idle';
    this.attempt = 0;
    this.lostAt = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retryTimer = undefined;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.statsTimer = undefined;
    /** @type {Map<string, StreamSample>} earlier samples, by `pc:mid`, for rates */
    this.samples = new Map();
    /** @type {Map<string, import('./stats.js').LayerMemory>} received cameras' layers, by server track id */
    this.layers = new Map();
    /** @type {Map<string, import('./stats.js').Shown>} the rating each tile shows, by tile key */
    this.shown = new Map();
    this.lastQualityAt = 0;
    this.offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    /** @type {string[]} cluster mode: the nodes' signaling URLs, as the last `joined` said */
    this.nodes = [];
    /** @type {string | undefined} cluster mode: the node we were last in the room on */
    this.lastNode = undefined;
    /** @type {string | undefined} where the next attempt goes first (our node drained) */
    this.movedTo = undefined;

    media.addEventListener('change', (e) => {
      const { source, track } = /** @type {CustomEvent} */ (e).detail;
      if (this.state !== 'joined' || !this.client || !this.client.canPublish) return;
      this.client.setSource(source, track);
      if (source === 'camera' || source === 'microphone') this.client.setState(this.mediaState());
    });
    globalThis.addEventListener?.('offline', () => {
      this.offline = true;
      if (this.state === 'reconnecting') this.emitReconnecting('you are offline');
    });
    globalThis.addEventListener?.('online', () => {
      this.offline = false;
      if (this.state === 'joined') this.networkChanged();
      else if (this.state === 'reconnecting') this.attemptNow();
    });
    // Wi-Fi to mobile data and the like (Network Information API, where there is one).
    /** @type {any} */ (globalThis.navigator)?.connection?.addEventListener?.('change', () => {
      if (this.state === 'joined' && !this.offline) this.networkChanged();
    });
  }

  /**
   * The network changed under a joined session: our address may be different now. If the
   * signaling connection still answers, media finds a new path by an ICE restart and we stay
   * in the room; if it does not, we join again.
   */
  networkChanged() {
    const client = this.client;
    if (!client) return;
    client.alive(3_000).then((ok) => {
      if (this.client !== client || this.state !== 'joined') return;
      if (ok) client.restartIce('the network changed');
      else client.close('the network changed');
    });
  }

  /** What the others are told about our microphone and camera. */
  mediaState() {
    return {
      audio: Boolean(this.media.microphone) && this.media.micOn,
      video: Boolean(this.media.camera) && this.media.camOn,
    };
  }

  /**
   * The first join. Rejects (and leaves the session idle) if it fails, so the prejoin view
   * can say why and offer Join again.
   */
  async start() {
    this.state = 'joining';
    try {
      const joined = await this.connect();
      this.state = 'joined';
      this.emitJoined(joined, false);
      this.startStats();
      return joined;
    } catch (err) {
      this.state = 'idle';
      throw err;
    }
  }

  /** Leaves: the others see us go at once; the goodbye finishes in the background. */
  leave() {
    const client = this.client;
    this.end('left');
    client?.leave();
  }

  /** After `failed`: tries again from the start. */
  retry() {
    if (this.state !== 'failed') return;
    this.state = 'reconnecting';
    this.attempt = 0;
    this.lostAt = Date.now();
    this.attemptNow();
  }

  /**
   * @param {import('./protocol.js').JoinedMessage} joined
   * @param {boolean} reconnected
   */
  emitJoined(joined, reconnected) {
    this.role = joined.role ?? 'presenter';
    this.lastNode = joined.node ?? undefined;
    if (joined.nodes?.length) this.nodes = joined.nodes;
    // A viewer sends nothing: whatever was captured before we knew is released.
    if (this.role === 'viewer') this.media.stopAll();
    this.emit('joined', {
      id: joined.id,
      participants: joined.participants,
      reconnected,
      role: this.role,
      locked: Boolean(joined.locked),
    });
  }

  /** @param {boolean} on */
  setMicrophone(on) {
    const ok = this.media.setMicOn(on);
    this.client?.setState(this.mediaState());
    return ok;
  }

  /** @param {boolean} on */
  async setCamera(on) {
    const ok = await this.media.setCamOn(on);
    // setCamOn reported the track change; the state follows it.
    this.client?.setState(this.mediaState());
    return ok;
  }

  // ---- internals ----

  /**
   * One connection: a new client with the current media, joined. In a cluster, a node that
   * cannot be reached at all is skipped for the next one the last `joined` listed (naming the
   * node we lost, so that a dead node's room moves at once).
   */
  async connect() {
    const first = this.movedTo ?? this.url;
    this.movedTo = undefined;
    const others = this.nodes.filter((u) => u !== first);
    let lastErr;
    for (const url of [first, ...others]) {
      try {
        return await this.connectTo(url);
      } catch (err) {
        lastErr = err;
        // Only a node that never answered is skipped; a refusal is the room's answer.
        if (!this.client || this.client.reached || this.nodes.length === 0) throw err;
        console.warn(`confab: ${url ?? 'this server'} cannot be reached; trying another node`);
      }
    }
    throw lastErr;
  }

  /**
   * @param {string | undefined} url
   * @returns {Promise<import('./protocol.js').JoinedMessage>}
   */
  connectTo(url) {
    const client = new ConfabClient({
      room: this.room,
      name: this.name,
      tracks: this.media.tracks(),
      state: this.mediaState(),
      placeholder: this.placeholder,
      identity: this.identity,
      url,
      password: this.password,
      token: this.token,
      previousNode: this.lastNode,
    });
    this.client = client;
    this.emit('client', { client });
    client.addEventListener('closed', (e) => {
      if (this.client !== client) return;
      const { reason, left, removed, unreachable, moved } = /** @type {CustomEvent} */ (e).detail;
      if (left || this.state === 'ended') return;
      // Taken out by an operator: coming back by ourselves would undo their decision.
      if (removed) this.end(reason, true);
      else if (moved && this.state === 'joined') this.follow(moved.url, reason);
      else if (unreachable) this.mediaBlocked(reason);
      else if (this.state === 'joined') this.lost(reason);
    });
    client.addEventListener('ice-restart', (e) => {
      if (this.client === client) this.emit('ice-restart', /** @type {CustomEvent} */ (e).detail);
    });
    client.addEventListener('muted', (e) => {
      if (this.client !== client) return;
      const { kind, by } = /** @type {CustomEvent} */ (e).detail;
      // As the user's own toggle would; turning it on again is their choice.
      if (kind === 'audio') this.setMicrophone(false);
      else this.setCamera(false).catch((err) => console.warn('confab: camera off failed', err));
      this.emit('muted', { kind, by });
    });
    return client.join();
  }

  /**
   * Media cannot get through from this network: stop (no rejoin loop, which would fail the
   * same way and write a join and a leave into the room's history each time) and say so;
   * `retry()` tries again when the user asks.
   * @param {string} reason
   */
  mediaBlocked(reason) {
    this.stopStats();
    clearTimeout(this.retryTimer);
    this.state = 'failed';
    this.emit('failed', { reason, media: true });
  }

  /**
   * Our node is draining: rejoin where the room went, at once.
   * @param {string} url
   * @param {string} reason
   */
  follow(url, reason) {
    this.stopStats();
    this.state = 'reconnecting';
    this.attempt = 0;
    this.lostAt = Date.now();
    this.movedTo = url;
    this.emitReconnecting(reason);
    this.attemptNow();
  }

  /** @param {string} reason */
  lost(reason) {
    this.stopStats();
    this.state = 'reconnecting';
    this.attempt = 0;
    this.lostAt = Date.now();
    this.schedule(reason);
  }

  /** @param {string} reason */
  schedule(reason) {
    clearTimeout(this.retryTimer);
    if (!this.offline && Date.now() - this.lostAt > GIVE_UP_AFTER_MS) {
      this.state = 'failed';
      this.emit('failed', { reason, media: false });
      return;
    }
    const delayMs = reconnectDelay(this.attempt);
    this.emitReconnecting(reason, delayMs);
    this.retryTimer = setTimeout(() => this.attemptNow(), delayMs);
  }

  /**
   * @param {string} reason
   * @param {number} [delayMs]
   */
  emitReconnecting(reason, delayMs = 0) {
    this.emit('reconnecting', { attempt: this.attempt, delayMs, reason, offline: this.offline });
  }

  async attemptNow() {
    clearTimeout(this.retryTimer);
    if (this.state !== 'reconnecting') return;
    if (this.offline) {
      // Nothing to try until the network is back (the `online` event brings us here again).
      this.emitReconnecting('you are offline');
      return;
    }
    this.attempt += 1;
    try {
      const joined = await this.connect();
      if (this.state !== 'reconnecting') {
        this.client?.leave();
        return;
      }
      this.state = 'joined';
      this.emitJoined(joined, true);
      this.startStats();
    } catch (err) {
      if (this.state !== 'reconnecting') return;
      if (err instanceof ConfabError && FATAL_CODES.has(err.code)) {
        this.end(err.message);
        return;
      }
      this.schedule(err instanceof Error ? err.message : String(err));
    }
  }

  /**
   * @param {string} reason
   * @param {boolean} [removed]  an operator ended it
   */
  end(reason, removed = false) {
    if (this.state === 'ended') return;
    this.state = 'ended';
    clearTimeout(this.retryTimer);
    this.stopStats();
    this.media.stopAll();
    this.emit('ended', { reason, removed });
  }

  startStats() {
    this.stopStats();
    this.samples.clear();
    this.layers.clear();
    this.shown.clear();
    this.lastQualityAt = 0;
    this.statsTimer = setInterval(() => {
      this.pollStats().catch((err) => console.debug('confab: stats', err));
    }, LEVELS_EVERY_MS);
  }

  stopStats() {
    clearInterval(this.statsTimer);
    this.statsTimer = undefined;
  }

  async pollStats() {
    const client = this.client;
    if (!client || this.state !== 'joined' || client.id === null) return;
    const snap = await client.statsSnapshot();
    const sub = readStats(snap.subscribe);
    const pub = readStats(snap.publish);
    // Media stopped arriving (UDP got blocked, the network changed): look for a new path now
    // rather than when the browser's ICE notices, seconds later.
    const silence = pathSilenceMs(snap.subscribe);
    if (sub.streams.size > 0 && silence !== null && silence > PATH_SILENCE_MS) {
      client.restartIce(`no media for ${Math.round(silence / 1000)} s`);
    }

    const now = Date.now();
    if (now - this.lastQualityAt < QUALITY_EVERY_MS) return;
    this.lastQualityAt = now;
    /**
     * @typedef {object} TileStreams
     * @property {Array<{before: StreamSample | undefined, now: StreamSample}>} streams
     * @property {number | null} rtt
     * @property {import('./stats.js').Transport | null} transport
     * @property {{live?: boolean, layerRatio?: number | null}} camera
     * @property {boolean} partial  a camera picture was expected but not judged (settling)
     */
    /** @type {Map<string, TileStreams>} */
    const byTile = new Map();
    /** @type {Map<string, import('./stats.js').LayerMemory>} what `this.layers` becomes */
    const layers = new Map();
    /**
     * @param {string} key
     * @param {string} sampleKey
     * @param {StreamSample} now
     * @param {{rttMs: number | null, transport: import('./stats.js').Transport | null}} pc
     */
    const add = (key, sampleKey, now, pc) => {
      const tile = byTile.get(key) ?? { streams: [], rtt: pc.rttMs, transport: pc.transport, camera: {}, partial: false };
      tile.streams.push({ before: this.samples.get(sampleKey), now });
      byTile.set(key, tile);
      return tile;
    };
    for (const [mid, s] of sub.streams) {
      const owner = snap.remote.get(mid);
      if (!owner) continue;
      const tile = add(tileKey(owner.participant, owner.source), `s:${mid}`, s, sub);
      if (s.kind !== 'video' || owner.source !== 'camera') continue;
      // A camera turned off is forgotten (left out of `layers`): what comes when it is on
      // again may be another camera, with pictures of another size.
      if (!owner.cameraOn) continue;
      const layer = followLayer(this.layers.get(owner.track), owner.layer, s.height, now);
      layers.set(owner.track, layer.memory);
      tile.camera = { live: layer.settled, layerRatio: layer.ratio };
      tile.partial = !layer.settled && owner.layer !== null;
    }
    this.layers = layers;
    for (const [mid, s] of pub.streams) {
      const source = snap.local.get(mid);
      if (!source) continue;
      const tile = add(tileKey(client.id, source), `p:${mid}`, s, pub);
      // Our own camera's frame rate is judged; its layers and freezes are the viewers' to see.
      if (source === 'camera') tile.camera = { live: true };
    }

    /** @type {Map<string, Quality>} */
    const quality = new Map();
    for (const [key, { streams, rtt, transport, camera, partial }] of byTile) {
      const q = tileQuality(streams, rtt, transport, camera);
      const shown = smoothRating(this.shown.get(key), q.rating, partial);
      this.shown.set(key, shown);
      // The numbers are this sample's; the rating may still wait to move up (smoothRating).
      quality.set(key, { ...q, rating: shown.rating });
    }
    for (const key of this.shown.keys()) if (!byTile.has(key)) this.shown.delete(key);
    // Rates are measured between quality rounds.
    this.samples.clear();
    for (const [mid, s] of sub.streams) this.samples.set(`s:${mid}`, s);
    for (const [mid, s] of pub.streams) this.samples.set(`p:${mid}`, s);
    this.emit('quality', { quality });
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
