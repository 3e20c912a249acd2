// @ts-check
/**
 * The signaling client: owns the `/ws` WebSocket and the two peer connections of one
 * participant, exactly as docs/protocol.md describes them. No DOM code lives here; the page
 * (room.js) listens to the events this module dispatches and draws.
 *
 * Peer-connection model (one offerer per connection, so no glare):
 * - publish:   we offer (`publish`), the server answers (`answer`). Sendonly camera + mic.
 * - subscribe: the server offers (`offer` + `revision`), we answer (`subscribe_answer`).
 *
 * Events (all `CustomEvent`s, payload in `detail`):
 * - `participant-joined`, `participant-updated`: `{participant: ParticipantInfo}`
 * - `participant-left`: `{id}`
 * - `remote-track`: `{participant, track, stream}` — a track of another participant arrived;
 *   `stream` holds all of that participant's current tracks.
 * - `remote-track-removed`: `{participant, track, stream}`
 * - `joined`: `{id, room, participants, upload_token}` — we are in (also resolves `join()`)
 * - `chat`: `{message: ChatMessage}` — a chat message for us (public, or private to/from us)
 * - `chat-ack`: `{client_id, message: ChatMessage}` — our message with that client_id is stored
 * - `history`: `{messages: ChatMessage[], more}` — older chat messages, oldest first
 * - `server-error`: `{code, message}` — the server refused something
 * - `connection-state`: `{pc, state}` — a peer connection's `connectionState` changed
 * - `closed`: `{reason}` — the session is over (left, `bye`, or the socket dropped)
 */

// ---- Wire types; they mirror server/src/protocol.rs. ----

/** @typedef {'publish' | 'subscribe'} PcRole */
/**
 * @typedef {object} IceCandidate
 * @property {string} candidate  an empty string means end of candidates
 * @property {string | null} [sdpMid]
 * @property {number | null} [sdpMLineIndex]
 * @property {string | null} [usernameFragment]
 */
/** @typedef {'browser' | 'camera'} ParticipantKind */
/** @typedef {'audio' | 'video'} MediaKind */
/**
 * @typedef {object} TrackInfo
 * @property {string} id     server-wide track id
 * @property {MediaKind} kind
 * @property {string} codec  `H264`, `VP8`, `opus`, …
 */
/**
 * @typedef {object} ParticipantInfo
 * @property {string} id
 * @property {string} name
 * @property {ParticipantKind} kind
 * @property {TrackInfo[]} tracks
 * @property {boolean} audio  microphone on, as the participant says
 * @property {boolean} video  camera on, as the participant says
 * @property {string} [state]  cameras: `live`, `connecting`, `retrying: why`, or what is unsupported
 */
/**
 * @typedef {object} OfferedTrack
 * @property {string} participant
 * @property {string} track
 * @property {MediaKind} kind
 */
/**
 * @typedef {'bad_message' | 'bad_room' | 'bad_name' | 'not_joined' | 'already_joined'
 *   | 'bad_sdp' | 'room_full' | 'too_large' | 'rate_limited' | 'bad_text'
 *   | 'unknown_recipient' | 'internal'} ErrorCode
 */
/**
 * A shared file as a chat message of kind `file` carries it.
 * @typedef {object} FileRef
 * @property {string} name
 * @property {number} size  bytes
 * @property {string} mime
 * @property {string} url   where to download it (same origin)
 */
/**
 * A chat message as the server stores and sends it (docs/protocol.md, "Chat").
 * @typedef {object} ChatMessage
 * @property {number} id         server-assigned, strictly increasing
 * @property {string} room
 * @property {string} from       sender's participant id
 * @property {string} name       sender's display name
 * @property {string} text       for `file`: the file name
 * @property {number} ts         server time, ms since the epoch (UTC)
 * @property {string | null} [to]  recipient of a private message
 * @property {boolean} private
 * @property {'text' | 'file' | 'system'} kind
 * @property {FileRef | null} [file]
 * @property {string | null} [client_id]
 */
/**
 * @typedef {{type: 'join', room: string, name: string, identity?: string}
 *   | {type: 'publish', sdp: string}
 *   | {type: 'subscribe_answer', sdp: string, revision: number}
 *   | {type: 'candidate', pc: PcRole, candidate: IceCandidate}
 *   | {type: 'update', audio?: boolean, video?: boolean}
 *   | {type: 'ping', nonce?: number}
 *   | {type: 'leave'}
 *   | {type: 'chat', text: string, to?: string, client_id: string}
 *   | {type: 'history', before?: number, limit?: number}} ClientMessage
 */
/**
 * @typedef {{type: 'joined', room: string, id: string, participants: ParticipantInfo[],
 *     upload_token: string}
 *   | {type: 'participant_joined', participant: ParticipantInfo}
 *   | {type: 'participant_updated', participant: ParticipantInfo}
 *   | {type: 'participant_left', id: string}
 *   | {type: 'answer', sdp: string}
 *   | {type: 'offer', sdp: string, revision: number, tracks: OfferedTrack[]}
 *   | {type: 'candidate', pc: PcRole, candidate: IceCandidate}
 *   | {type: 'pong', nonce?: number}
 *   | {type: 'error', code: ErrorCode, message: string}
 *   | {type: 'bye', reason: string}
 *   | {type: 'chat', message: ChatMessage}
 *   | {type: 'chat_ack', client_id: string, message: ChatMessage}
 *   | {type: 'history', messages: ChatMessage[], more: boolean}} ServerMessage
 */
/** @typedef {Extract<ServerMessage, {type: 'joined'}>} JoinedMessage */

/** The keepalive period; the server drops connections silent for 30 s. */
const PING_INTERVAL_MS = 10_000;
/** How long `leave()` waits for the server's `bye` before closing by itself. */
const LEAVE_TIMEOUT_MS = 2_000;

/**
 * The WebSocket URL of the signaling endpoint for a page at `location`.
 * @param {{protocol: string, host: string}} location
 */
export function signalingUrl(location) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/**
 * The upload endpoint of `room` on the server whose signaling URL is `signaling`.
 * @param {string} signaling  e.g. `wss://meet.example/ws`
 * @param {string} room
 */
export function uploadUrl(signaling, room) {
  const url = new URL(signaling);
  url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
  url.pathname = `/api/rooms/${encodeURIComponent(room)}/files`;
  url.search = '';
  return url.href;
}

/**
 * Orders codec capabilities the way the server prefers to receive them: H.264 with
 * packetization-mode=1 (profile 42e01f first, then the other profiles the server accepts),
 * then any other H.264, then VP8, then everything else in the browser's order (RTX, RED,
 * FEC, other video codecs). Audio lists only move Opus to the front.
 * @template {{mimeType: string, sdpFmtpLine?: string}} C
 * @param {C[]} codecs
 * @returns {C[]}
 */
export function preferredCodecOrder(codecs) {
  /** @param {C} c */
  const rank = (c) => {
    const mime = c.mimeType.toLowerCase();
    const fmtp = (c.sdpFmtpLine ?? '').toLowerCase();
    if (mime === 'video/h264') {
      const mode1 = /(^|;)\s*packetization-mode=1/.test(fmtp);
      const profile = /profile-level-id=([0-9a-f]{6})/.exec(fmtp)?.[1];
      if (mode1 && profile === '42e01f') return 0;
      if (mode1 && (profile === '42001f' || profile === '4d001f')) return 1;
      if (mode1) return 2;
      return 3;
    }
    if (mime === 'video/vp8') return 4;
    if (mime === 'audio/opus') return 0;
    return 5;
  };
  // Array.prototype.sort is stable, so equal ranks keep the browser's order.
  return codecs
    .map((c, i) => ({ c, i, r: rank(c) }))
    .sort((a, b) => a.r - b.r || a.i - b.i)
    .map((x) => x.c);
}

/**
 * Maps each m-section's `mid` to the stream id of its `a=msid` line. In subscribe offers the
 * stream id is the publishing participant's id, so this tells whose track a transceiver
 * carries even when `RTCTrackEvent.streams` is empty.
 * @param {string} sdp
 * @returns {Map<string, string>}
 */
export function streamIdsByMid(sdp) {
  /** @type {Map<string, string>} */
  const out = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section)?.[1];
    const stream = /^a=msid:(\S+)/m.exec(section)?.[1];
    if (mid !== undefined && stream !== undefined && stream !== '-') out.set(mid, stream);
  }
  return out;
}

/**
 * One participant's session: signaling plus both peer connections.
 */
export class ConfabClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.room
   * @param {string} options.name
   * @param {MediaStream | null} [options.stream]  local camera/mic; null joins as a viewer
   * @param {string} [options.url]  signaling URL; defaults to `/ws` of the current page
   * @param {string} [options.identity]  the secret that lets a reconnecting participant see
   *   its own private messages again (see `chat.js`'s `loadIdentity`)
   */
  constructor({ room, name, stream = null, url, identity }) {
    super();
    this.room = room;
    this.name = name;
    this.localStream = stream;
    this.url = url ?? signalingUrl(globalThis.location);
    this.identity = identity;
    /** @type {string | null} our participant id, known after `joined` */
    this.id = null;
    /** @type {string | null} authorizes file uploads while we are in the room */
    this.uploadToken = null;
    /** @type {RTCPeerConnection | null} */
    this.publishPc = null;
    /** @type {RTCPeerConnection | null} */
    this.subscribePc = null;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {Map<string, MediaStream>} remote participant id → their tracks */
    this.remoteStreams = new Map();
    /** @type {Map<string, string>} subscribe transceiver mid → participant id */
    this.midOwners = new Map();
    /** @type {Record<PcRole, RTCIceCandidateInit[]>} server candidates that came too early */
    this.pendingCandidates = { publish: [], subscribe: [] };
    /** @type {((sdp: string) => void) | null} resolves the outstanding publish offer */
    this.onAnswer = null;
    /** Subscribe offers are applied strictly one after the other. */
    this.subscribeQueue = Promise.resolve();
    this.closed = false;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.pingTimer = undefined;
    this.pingNonce = 0;
  }

  /**
   * Connects, joins the room and starts publishing. Resolves with the `joined` message.
   * @returns {Promise<JoinedMessage>}
   */
  join() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let joined = false;
      ws.onopen = () => {
        /** @type {ClientMessage} */
        const join = { type: 'join', room: this.room, name: this.name };
        if (this.identity) join.identity = this.identity;
        this.send(join);
      };
      ws.onmessage = (event) => {
        /** @type {ServerMessage} */
        let msg;
        try {
          msg = JSON.parse(String(event.data));
        } catch {
          console.warn('confab: ignoring a non-JSON frame');
          return;
        }
        if (!joined && msg.type === 'error') {
          reject(new ConfabError(msg.code, msg.message));
          this.close(msg.message);
          return;
        }
        if (msg.type === 'joined') {
          joined = true;
          this.id = msg.id;
          this.uploadToken = msg.upload_token;
          this.startSession();
          resolve(msg);
          this.emit('joined', msg);
          return;
        }
        this.handle(msg);
      };
      ws.onclose = (event) => {
        if (!joined) {
          const why = `Could not reach the server (connection closed, code ${event.code}). Try again.`;
          reject(new ConfabError('closed', why));
        }
        this.close(event.reason || 'connection lost');
      };
    });
  }

  /**
   * Tells the server the microphone state and mutes the sent audio.
   * @param {boolean} on
   */
  setMicrophone(on) {
    for (const t of this.localStream?.getAudioTracks() ?? []) t.enabled = on;
    this.send({ type: 'update', audio: on });
  }

  /**
   * Tells the server the camera state and blanks the sent video.
   * @param {boolean} on
   */
  setCamera(on) {
    for (const t of this.localStream?.getVideoTracks() ?? []) t.enabled = on;
    this.send({ type: 'update', video: on });
  }

  /**
   * Sends a chat message, to everyone or privately to participant `to`. Returns false when
   * the socket is not open; the caller keeps the message and resends it with the same
   * `clientId` later (the server acknowledges a repeat without delivering it twice).
   * @param {string} text
   * @param {string | null} to
   * @param {string} clientId
   */
  sendChat(text, to, clientId) {
    /** @type {ClientMessage} */
    const msg = { type: 'chat', text, client_id: clientId };
    if (to) msg.to = to;
    return this.send(msg);
  }

  /**
   * Asks for chat messages older than id `before`; the answer comes as a `history` event.
   * @param {number} before
   */
  requestHistory(before) {
    return this.send({ type: 'history', before });
  }

  /**
   * Uploads a file into the room's chat. The server announces it to everyone (us included)
   * as a `chat` message of kind `file`; the resolved message is the same one.
   * @param {Blob & {name?: string}} file
   * @returns {Promise<ChatMessage>}
   */
  async uploadFile(file) {
    if (!this.uploadToken) throw new ConfabError('not_joined', 'join the room before sending files');
    const body = new FormData();
    body.append('file', file, file.name ?? 'file');
    const response = await fetch(uploadUrl(this.url, this.room), {
      method: 'POST',
      headers: { Authorization: `Bearer ${this.uploadToken}` },
      body,
    });
    /** @type {any} */
    let json = null;
    try {
      json = await response.json();
    } catch {
      // Not JSON (e.g. a proxy's error page); the status below still says what happened.
    }
    if (!response.ok) {
      const why = typeof json?.error === 'string' ? json.error : `${response.status} ${response.statusText}`;
      throw new Error(`could not send ${file.name ?? 'the file'}: ${why}`);
    }
    return /** @type {ChatMessage} */ (json);
  }

  /** Leaves the room: the server answers with `bye` and closes; we stop waiting after 2 s. */
  async leave() {
    const ws = this.ws;
    if (this.closed || !ws) return;
    const gone = new Promise((resolve) => {
      ws.addEventListener('close', resolve, { once: true });
      setTimeout(resolve, LEAVE_TIMEOUT_MS);
    });
    this.send({ type: 'leave' });
    await gone;
    this.close('left');
  }

  /**
   * Ends everything locally (idempotent) and dispatches `closed` once.
   * @param {string} reason
   */
  close(reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    this.publishPc?.close();
    this.subscribePc?.close();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    this.emit('closed', { reason });
  }

  // ---- internals ----

  /**
   * @param {ClientMessage} msg
   * @returns {boolean} whether it went out (the socket was open)
   */
  send(msg) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  startSession() {
    this.pingTimer = setInterval(
      () => this.send({ type: 'ping', nonce: ++this.pingNonce }),
      PING_INTERVAL_MS,
    );
    this.subscribePc = this.createPc('subscribe');
    this.subscribePc.ontrack = (event) => this.onRemoteTrack(event);
    const tracks = this.localStream?.getTracks() ?? [];
    // The server starts everyone as microphone and camera off; say what we actually send,
    // before the tracks appear, so nobody shows us as muted with a hidden video.
    const on = (/** @type {string} */ kind) => tracks.some((t) => t.kind === kind && t.enabled);
    if (tracks.length > 0) this.send({ type: 'update', audio: on('audio'), video: on('video') });
    if (tracks.length > 0) {
      this.publishPc = this.createPc('publish');
      this.startPublishing(this.publishPc, tracks).catch((err) => {
        console.error('confab: publishing failed', err);
        this.emit('server-error', { code: 'publish', message: String(err) });
      });
    }
  }

  /**
   * A peer connection that trickles its candidates to the server under `role`.
   * @param {PcRole} role
   */
  createPc(role) {
    // The server is ICE-lite with host candidates on one UDP port: no STUN/TURN needed.
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    pc.onicecandidate = (event) => {
      const candidate = event.candidate ? event.candidate.toJSON() : { candidate: '' };
      this.send({
        type: 'candidate',
        pc: role,
        candidate: /** @type {IceCandidate} */ ({ candidate: '', ...candidate }),
      });
    };
    pc.onconnectionstatechange = () =>
      this.emit('connection-state', { pc: role, state: pc.connectionState });
    return pc;
  }

  /**
   * Adds sendonly transceivers (audio, then video) with H.264 first, and negotiates.
   * @param {RTCPeerConnection} pc
   * @param {MediaStreamTrack[]} tracks
   */
  async startPublishing(pc, tracks) {
    const stream = /** @type {MediaStream} */ (this.localStream);
    const ordered = [...tracks].sort((a, b) => (a.kind === b.kind ? 0 : a.kind === 'audio' ? -1 : 1));
    for (const track of ordered) {
      const transceiver = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      preferCodecs(transceiver, track.kind);
    }
    await this.negotiatePublish(pc);
  }

  /**
   * One publish offer/answer round. Callers must not overlap rounds (the protocol allows
   * one outstanding `publish`), which holds as long as only startPublishing calls this.
   * @param {RTCPeerConnection} pc
   */
  async negotiatePublish(pc) {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const answer = new Promise((resolve) => {
      this.onAnswer = resolve;
    });
    this.send({ type: 'publish', sdp: /** @type {string} */ (pc.localDescription?.sdp) });
    const sdp = /** @type {string} */ (await answer);
    if (pc.signalingState === 'closed') return;
    await pc.setRemoteDescription({ type: 'answer', sdp });
    await this.flushCandidates('publish');
  }

  /** @param {ServerMessage} msg */
  handle(msg) {
    switch (msg.type) {
      case 'participant_joined':
        this.emit('participant-joined', { participant: msg.participant });
        break;
      case 'participant_updated':
        this.emit('participant-updated', { participant: msg.participant });
        break;
      case 'participant_left':
        this.remoteStreams.delete(msg.id);
        this.emit('participant-left', { id: msg.id });
        break;
      case 'answer': {
        const resolve = this.onAnswer;
        this.onAnswer = null;
        if (resolve) resolve(msg.sdp);
        else console.warn('confab: answer without an outstanding publish offer');
        break;
      }
      case 'offer':
        this.subscribeQueue = this.subscribeQueue
          .then(() => this.applySubscribeOffer(msg))
          .catch((err) => console.error(`confab: subscribe offer ${msg.revision} failed`, err));
        break;
      case 'candidate':
        this.addServerCandidate(msg.pc, msg.candidate);
        break;
      case 'pong':
        break;
      case 'chat':
        this.emit('chat', { message: msg.message });
        break;
      case 'chat_ack':
        this.emit('chat-ack', { client_id: msg.client_id, message: msg.message });
        break;
      case 'history':
        this.emit('history', { messages: msg.messages, more: msg.more });
        break;
      case 'error':
        console.warn(`confab: server error ${msg.code}: ${msg.message}`);
        this.emit('server-error', { code: msg.code, message: msg.message });
        break;
      case 'bye':
        this.close(msg.reason);
        break;
      case 'joined':
        console.warn('confab: unexpected second joined');
        break;
    }
  }

  /**
   * @param {{sdp: string, revision: number, tracks: OfferedTrack[]}} offer
   */
  async applySubscribeOffer(offer) {
    const pc = this.subscribePc;
    if (!pc || pc.signalingState === 'closed') return;
    for (const [mid, owner] of streamIdsByMid(offer.sdp)) this.midOwners.set(mid, owner);
    await pc.setRemoteDescription({ type: 'offer', sdp: offer.sdp });
    await this.flushCandidates('subscribe');
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this.send({
      type: 'subscribe_answer',
      revision: offer.revision,
      sdp: /** @type {string} */ (pc.localDescription?.sdp),
    });
  }

  /** @param {RTCTrackEvent} event */
  onRemoteTrack(event) {
    const mid = event.transceiver.mid;
    const participant =
      event.streams[0]?.id ?? (mid !== null ? this.midOwners.get(mid) : undefined);
    if (!participant) {
      console.warn('confab: a remote track without an owner', event.track.id);
      return;
    }
    let stream = this.remoteStreams.get(participant);
    if (!stream) {
      stream = new MediaStream();
      this.remoteStreams.set(participant, stream);
    }
    const owned = stream;
    const track = event.track;
    // One track per kind: a renegotiated track replaces the old one of its kind.
    for (const old of owned.getTracks()) {
      if (old.kind === track.kind && old !== track) owned.removeTrack(old);
    }
    owned.addTrack(track);
    this.emit('remote-track', { participant, track, stream: owned });
    // When the server drops the track, its transceiver goes inactive and the remote
    // stream loses it; mirror that in the participant's stream.
    for (const remote of event.streams) {
      remote.addEventListener('removetrack', (e) => {
        if (e.track !== track || !owned.getTracks().includes(track)) return;
        owned.removeTrack(track);
        this.emit('remote-track-removed', { participant, track, stream: owned });
      });
    }
  }

  /**
   * @param {PcRole} role
   * @param {IceCandidate} candidate
   */
  addServerCandidate(role, candidate) {
    const pc = role === 'publish' ? this.publishPc : this.subscribePc;
    if (!pc) return;
    /** @type {RTCIceCandidateInit} */
    const init = {
      candidate: candidate.candidate,
      sdpMid: candidate.sdpMid ?? undefined,
      sdpMLineIndex: candidate.sdpMLineIndex ?? undefined,
      usernameFragment: candidate.usernameFragment ?? undefined,
    };
    if (init.sdpMid === undefined && init.sdpMLineIndex === undefined) init.sdpMLineIndex = 0;
    if (!pc.remoteDescription) {
      this.pendingCandidates[role].push(init);
      return;
    }
    pc.addIceCandidate(init).catch((err) =>
      console.warn(`confab: ${role} candidate rejected`, init.candidate, err),
    );
  }

  /** @param {PcRole} role */
  async flushCandidates(role) {
    const pc = role === 'publish' ? this.publishPc : this.subscribePc;
    const pending = this.pendingCandidates[role];
    this.pendingCandidates[role] = [];
    for (const init of pending) {
      await pc
        ?.addIceCandidate(init)
        .catch((err) => console.warn(`confab: ${role} candidate rejected`, init.candidate, err));
    }
  }
}

/** An error the server (or the connection) reported while joining. */
export class ConfabError extends Error {
  /**
   * @param {ErrorCode | 'closed'} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * Applies preferredCodecOrder to a transceiver. Browsers validate the list against the
 * receiver capabilities (older ones) or sender capabilities (newer ones), so try both.
 * @param {RTCRtpTransceiver} transceiver
 * @param {string} kind
 */
function preferCodecs(transceiver, kind) {
  if (typeof transceiver.setCodecPreferences !== 'function') return;
  for (const source of [RTCRtpReceiver, RTCRtpSender]) {
    const codecs = source.getCapabilities(kind)?.codecs;
    if (!codecs) continue;
    try {
      transceiver.setCodecPreferences(preferredCodecOrder(codecs));
      return;
    } catch (err) {
      console.debug('confab: setCodecPreferences refused a capability list', err);
    }
  }
}
