// @ts-check
/**
 * The signaling client: owns the `/ws` WebSocket and the two peer connections of one
 * participant, exactly as docs/protocol.md describes them. No DOM code lives here; session.js
 * keeps one of these alive across reconnects and the page (room.js) draws what they report.
 *
 * Peer-connection model (one offerer per connection, so no glare):
 * - publish:   we offer (`publish`), the server answers (`answer`). Sendonly: microphone,
 *   camera, and while sharing, the screen (or a video file) with its audio.
 * - subscribe: the server offers (`offer` + `revision`), we answer (`subscribe_answer`).
 *
 * Which remote track is a camera and which a screen share: the server names tracks itself
 * (`{participant}-v{n}`) and says nothing about their source, so this client keeps a
 * publishing convention and reads its own convention back (`trackSources`):
 * - a participant's first video track is its camera; video tracks that come later are screen
 *   shares; audio tracks that come after a screen share are that share's sound;
 * - "first" is the order in which the server announces tracks (`participant.tracks`), which is
 *   the order their first packets arrived. So a screen share is only added once the server
 *   lists our camera track, and its sound only once it lists the share's video; without a
 *   camera (or with it off from the start) a black placeholder takes the camera's place until
 *   it is listed (`ensureCameraListed`);
 * - every source keeps its transceiver for the whole session once it has one: switching
 *   devices, turning the camera off, stopping and restarting a share is `replaceTrack`,
 *   never a new track (the server does not unpublish a track whose m-section a new offer
 *   makes inactive, so removed tracks would pile up as frozen pictures);
 * - so a stopped share is a share track that carries no frames: subscribers show a share
 *   only while its frames arrive (`SHARE_SILENCE_MS`).
 *
 * Events (all `CustomEvent`s, payload in `detail`):
 * - `joined`: `{id, room, participants, upload_token, role, locked}` — we are in (also
 *   resolves `join()`)
 * - `participant-joined`, `participant-updated`: `{participant: ParticipantInfo}` (others)
 * - `participant-left`: `{id}`
 * - `self-updated`: `{participant: ParticipantInfo}` — the server's view of us
 * - `feeds`: `{participant, camera: MediaStream | null, screen: MediaStream | null}` — what
 *   to show of a participant changed: `camera` holds its microphone and camera, `screen` its
 *   screen share (video and sound). The stream objects stay the same while only their
 *   tracks change.
 * - `chat`: `{message: ChatMessage}` — a chat message for us (public, or private to/from us)
 * - `chat-ack`: `{client_id, message: ChatMessage}` — our message with that client_id is stored
 * - `history`: `{messages: ChatMessage[], more}` — older chat messages, oldest first
 * - `server-error`: `{code, message}` — the server refused something
 * - `muted`: `{kind, by}` — operator `by` stopped our microphone (`audio`) or camera
 *   (`video`); the server drops that media until we turn it on again ourselves (`setState`)
 * - `room-state`: `{locked, by}` — an operator locked or unlocked the room
 * - `active-speaker`: `{id}` — the participant the server hears speaking now (us included),
 *   null when the speaker left and nobody has spoken since
 * - `connection-state`: `{pc, state}` — a peer connection's `connectionState` changed
 * - `ice-restart`: `{reason}` — a peer connection lost its path (the network changed, or
 *   UDP stopped getting through): both connections restart ICE and find a new one, over
 *   whichever transport works, without leaving the room
 * - `closed`: `{reason, left, removed, unreachable, moved}` — the session is over; `left` is true
 *   after `leave()`, false when the server ended it (`bye`) or the connection broke; `removed`
 *   is true when an operator took us out or ended the meeting (coming back would be wrong);
 *   `unreachable` is true when media never got through to the server at all (our network
 *   blocks it: joining again would fail the same way); `moved` is `{url, node, message}` when
 *   our node is draining in a cluster and the room goes on at `url` (rejoin there at once)
 *
 * Roles (`joined.role`): a viewer only watches and chats, so its client never opens a publish
 * connection; an operator may also `mute`, `remove`, `lock` and `end`.
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
/** @typedef {'presenter' | 'viewer' | 'operator'} Role */
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
 * @property {Role} [role]  absent from servers older than access control: a presenter
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
 *   | 'unknown_recipient' | 'auth_required' | 'token_required' | 'bad_credentials' | 'throttled' | 'room_locked'
 *   | 'too_many_rooms' | 'forbidden' | 'unknown_participant' | 'limit_exceeded'
 *   | 'media_unreachable' | 'cluster_unavailable' | 'internal'} ErrorCode
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
 * @typedef {{type: 'join', room: string, name: string, identity?: string, password?: string,
 *     token?: string, previous_node?: string}
 *   | {type: 'publish', sdp: string}
 *   | {type: 'subscribe_answer', sdp: string, revision: number}
 *   | {type: 'candidate', pc: PcRole, candidate: IceCandidate}
 *   | {type: 'restart_ice'}
 *   | {type: 'update', audio?: boolean, video?: boolean}
 *   | {type: 'quality', track: string, layer: number | null}
 *   | {type: 'ping', nonce?: number}
 *   | {type: 'leave'}
 *   | {type: 'chat', text: string, to?: string, client_id: string}
 *   | {type: 'history', before?: number, limit?: number}
 *   | {type: 'mute', id: string, kind: MediaKind}
 *   | {type: 'remove', id: string}
 *   | {type: 'lock', locked: boolean}
 *   | {type: 'end'}} ClientMessage
 */
/**
 * The server's TURN relay, when it runs one: ports on the page's own host and short-lived
 * credentials (docs/protocol.md, "TURN").
 * @typedef {object} TurnGrant
 * @property {string} username
 * @property {string} credential
 * @property {number} expires  Unix seconds
 * @property {number | null} udp
 * @property {number | null} tcp
 * @property {number | null} tls
 */
/**
 * @typedef {{type: 'joined', room: string, id: string, participants: ParticipantInfo[],
 *     upload_token: string, role: Role, locked: boolean, turn?: TurnGrant | null,
 *     node?: string, nodes?: string[]}
 *   | {type: 'participant_joined', participant: ParticipantInfo}
 *   | {type: 'participant_updated', participant: ParticipantInfo}
 *   | {type: 'participant_left', id: string}
 *   | {type: 'answer', sdp: string}
 *   | {type: 'offer', sdp: string, revision: number, tracks: OfferedTrack[]}
 *   | {type: 'candidate', pc: PcRole, candidate: IceCandidate}
 *   | {type: 'pong', nonce?: number}
 *   | {type: 'error', code: ErrorCode, message: string}
 *   | {type: 'bye', reason: string}
 *   | {type: 'redirect', url: string, node: string}
 *   | {type: 'moved', url: string, node: string, message: string}
 *   | {type: 'layers', track: string, paused: string[]}
 *   | {type: 'muted', kind: MediaKind, by: string}
 *   | {type: 'room_state', locked: boolean, by: string}
 *   | {type: 'speaker', id: string | null}
 *   | {type: 'chat', message: ChatMessage}
 *   | {type: 'chat_ack', client_id: string, message: ChatMessage}
 *   | {type: 'history', messages: ChatMessage[], more: boolean}} ServerMessage
 */
/** @typedef {Extract<ServerMessage, {type: 'joined'}>} JoinedMessage */

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
 * The claims of a join token (`confab token`), read without checking the signature: only to
 * show the name and role it carries before joining. The server checks it and fixes both.
 * Null for anything that is not a JWT with such claims.
 * @param {string} token
 * @returns {{room: string, name: string, role: Role, exp: number | null} | null}
 */
export function readTokenClaims(token) {
  const payload = token.split('.')[1];
  if (token.split('.').length !== 3 || !payload || !/^[A-Za-z0-9_-]+$/.test(payload)) return null;
  try {
    const b64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    if (typeof claims !== 'object' || claims === null) return null;
    const { room, name, role, exp } = claims;
    if (typeof room !== 'string' || typeof name !== 'string') return null;
    return {
      room,
      name,
      role: role === 'viewer' || role === 'operator' ? role : 'presenter',
      exp: typeof exp === 'number' ? exp : null,
    };
  } catch {
    return null;
  }
}

/**
 * The `iceServers` for `RTCPeerConnection` from the server's TURN grant: TURN over UDP and TCP
 * and TURNS (TLS) on the ports the server named, at the page's own host. Empty without a grant.
 * @param {TurnGrant | null | undefined} grant
 * @param {string} host  the page's hostname (`location.hostname`; IPv6 in brackets)
 * @returns {RTCIceServer[]}
 */
export function iceServersFrom(grant, host) {
  if (!grant) return [];
  /** @type {string[]} */
  const urls = [];
  if (grant.udp) urls.push(`turn:${host}:${grant.udp}?transport=udp`);
  if (grant.tcp) urls.push(`turn:${host}:${grant.tcp}?transport=tcp`);
  if (grant.tls) urls.push(`turns:${host}:${grant.tls}?transport=tcp`);
  return urls.length > 0 ? [{ urls, username: grant.username, credential: grant.credential }] : [];
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
 * Maps each m-section's `mid` to both ids of its `a=msid` line and whether it currently
 * carries media. In subscribe offers the stream id is the publishing participant's id and the
 * track id the server's track id (the one `participant.tracks` and the offer's `tracks` use).
 * @param {string} sdp
 * @returns {Map<string, {stream: string, track: string, active: boolean}>}
 */
export function msidsByMid(sdp) {
  /** @type {Map<string, {stream: string, track: string, active: boolean}>} */
  const out = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section)?.[1];
    const msid = /^a=msid:(\S+)(?:[ \t]+(\S+))?/m.exec(section);
    if (mid === undefined || !msid || msid[1] === '-') continue;
    const port = /^\S+\s+(\d+)/.exec(section)?.[1];
    const active = port !== '0' && !/^a=(inactive|recvonly)\s*$/m.test(section);
    out.set(mid, { stream: msid[1], track: msid[2] ?? '', active });
  }
  return out;
}

/** @typedef {'microphone' | 'camera' | 'screen' | 'screen-audio'} Source */

/** The media kind each source sends. */
export const SOURCE_KIND = /** @type {const} */ ({
  microphone: 'audio',
  camera: 'video',
  screen: 'video',
  'screen-audio': 'audio',
});

/**
 * The server's counter in a track id (`bob-v12` → 12), or Infinity when there is none.
 * @param {string} id
 */
function trackNumber(id) {
  const m = /-[av](\d+)$/.exec(id);
  return m ? Number(m[1]) : Infinity;
}

/**
 * Which source each track of a participant is, by the publishing convention described at the
 * top of this file: the first video is the camera, later videos are screen shares, audio after
 * a screen share belongs to it. Cameras bridged from RTSP only have a camera and a microphone.
 * @param {{kind: ParticipantKind, tracks: TrackInfo[]} | undefined} participant  as the
 *   server announced it; its `tracks` are in publish order
 * @param {Array<{id: string, kind: MediaKind}>} received  tracks we receive from it, possibly
 *   some the announcement does not list yet
 * @returns {Map<string, Source>}
 */
export function trackSources(participant, received) {
  const known = participant?.tracks ?? [];
  const knownIds = new Set(known.map((t) => t.id));
  const extra = received
    .filter((t) => !knownIds.has(t.id))
    .sort((a, b) => trackNumber(a.id) - trackNumber(b.id));
  /** @type {Map<string, Source>} */
  const out = new Map();
  let videos = 0;
  for (const t of [...known, ...extra]) {
    if (participant?.kind === 'camera') {
      out.set(t.id, t.kind === 'video' ? 'camera' : 'microphone');
    } else if (t.kind === 'video') {
      out.set(t.id, videos++ === 0 ? 'camera' : 'screen');
    } else {
      out.set(t.id, videos > 1 ? 'screen-audio' : 'microphone');
    }
  }
  return out;
}

/** The keepalive period; the server drops connections silent for 30 s. */
const PING_INTERVAL_MS = 10_000;
/** Without any message from the server for this long, the connection counts as lost. */
const SILENCE_LIMIT_MS = 25_000;
/** A peer connection `disconnected` this long restarts ICE. Chromium says `disconnected` only
 * after a few seconds without an answer to its checks, so the path is gone by then; the short
 * wait lets a connection that is already switching to another pair by itself (it keeps backup
 * pairs, e.g. ICE-TCP beside UDP) finish doing so. */
const DISCONNECTED_GRACE_MS = 250;
/** ICE restarts at most this often. */
const RESTART_INTERVAL_MS = 4_000;
/** Restarts in a row that do not bring a connection back before the session gives up and joins
 * again from scratch. */
const MAX_RESTARTS = 4;
/** What the page says when media cannot get through at all. */
export const MEDIA_UNREACHABLE =
  'Your network seems to block the media connection: audio and video could not reach the ' +
  'server (neither UDP nor TCP to its media port got through). Try another network, or ask ' +
  'whoever runs it to allow the meeting server.';
/** Redirects one join follows (cluster mode: a node sends us to the room's node, which
 * answers itself; more than one hop means the nodes disagree, and a few more settle it). */
const MAX_REDIRECTS = 3;
/** How long `join()` waits for `joined` before giving up. */
const JOIN_TIMEOUT_MS = 15_000;
/** How long `leave()` waits for the server's `bye` before closing by itself; also how long
 * the socket may stay open after a `bye`. */
const LEAVE_TIMEOUT_MS = 2_000;
/** The WebSocket close code of a session an operator ended (removed, or the meeting ended). */
export const CLOSE_REMOVED = 4001;
/** A screen share whose video stopped arriving this long ago has ended (see `updateFeeds`);
 * browsers repeat the last picture of an idle share at least once a second. */
const SHARE_SILENCE_MS = 3_500;
/** How long a screen share waits for the server to list our camera (see the top of the file). */
const CAMERA_LISTED_TIMEOUT_MS = 10_000;

/**
 * One participant's session: signaling plus both peer connections, from `join()` until it
 * closes. A new connection after a drop is a new `ConfabClient` (session.js does that).
 */
export class ConfabClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.room
   * @param {string} options.name
   * @param {Partial<Record<Source, MediaStreamTrack | null>>} [options.tracks]  what to
   *   publish from the start; none at all joins as a viewer
   * @param {{audio: boolean, video: boolean}} [options.state]  microphone and camera as the
   *   user set them (what the others are told)
   * @param {() => MediaStreamTrack | null} [options.placeholder]  makes a black video track
   *   that stands in for a missing camera (see `ensureCameraListed`)
   * @param {string} [options.url]  signaling URL; defaults to `/ws` of the current page
   * @param {string} [options.identity]  the secret that lets a reconnecting participant see
   *   its own private messages again (see `chat.js`'s `loadIdentity`)
   * @param {string} [options.password]  the room's password, for a room protected by one
   * @param {string} [options.token]  a join token (fixes our name and role)
   * @param {string} [options.previousNode]  cluster mode, on a rejoin: the node we were last
   *   in the room on (if it is dead, the room moves at once)
   */
  constructor({ room, name, tracks = {}, state, placeholder, url, identity, password, token, previousNode }) {
    super();
    /** @type {string | undefined} */
    this.previousNode = previousNode;
    /** Whether a signaling socket ever opened (false: the server could not be reached). */
    this.reached = false;
    /** @type {string | null} the node we are joined on (cluster mode) */
    this.node = null;
    /** @type {string[]} the cluster's signaling URLs, to rejoin through another (cluster mode) */
    this.nodes = [];
    /** @type {{url: string, node: string, message: string} | null} set when our node drains */
    this.moved = null;
    /** @type {Map<string, number>} the width (device pixels) each remote video is shown at, by `participant:source` */
    this.videoWidths = new Map();
    /** @type {Map<string, number | null>} the simulcast layer asked for (null: paused), by server track id */
    this.layersAsked = new Map();
    /** @type {DataMode} what the user lets video cost (see `setDataMode`) */
    this.dataMode = 'normal';
    this.room = room;
    this.name = name;
    this.url = url ?? signalingUrl(globalThis.location);
    this.identity = identity;
    this.password = password;
    this.token = token;
    /** @type {Role} what we may do, known after `joined` */
    this.role = 'presenter';
    /** Whether an operator has locked the room. */
    this.locked = false;
    /** @type {string | null} the reason of the server's `bye`, until the socket closes */
    this.byeReason = null;
    this.placeholder = placeholder ?? (() => null);
    /** @type {Map<Source, MediaStreamTrack | null>} what each source should send now */
    this.tracks = new Map(/** @type {[Source, MediaStreamTrack | null][]} */ (Object.entries(tracks)));
    this.state = state ?? {
      audio: Boolean(tracks.microphone?.enabled),
      video: Boolean(tracks.camera),
    };
    /** @type {string | null} our participant id, known after `joined` */
    this.id = null;
    /** @type {RTCIceServer[]} the server's TURN relay, if it offers one (after `joined`) */
    this.iceServers = [];
    /** @type {string | null} authorizes file uploads while we are in the room */
    this.uploadToken = null;
    /** @type {RTCPeerConnection | null} */
    this.publishPc = null;
    /** @type {RTCPeerConnection | null} */
    this.subscribePc = null;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {Map<string, ParticipantInfo>} everyone else in the room, by id */
    this.participants = new Map();
    /** @type {ParticipantInfo | null} the server's view of us */
    this.self = null;
    /** @type {Map<Source, RTCRtpSender>} our senders on the publish connection */
    this.senders = new Map();
    /** One stream id for everything we publish (the server ignores it; browsers want one). */
    this.publishStream = new MediaStream();
    /** Publish negotiations and source changes run strictly one after the other. */
    this.publishQueue = Promise.resolve();
    /** @type {Map<string, {participant: string, track: string}>} subscribe mid → whose track */
    this.remoteMids = new Map();
    /** @type {Map<string, {camera: MediaStream, screen: MediaStream, shown: string}>} per participant */
    this.feeds = new Map();
    /** @type {Map<string, {frames: number, at: number}>} screen-share mid → frames so far, when they last grew */
    this.screenActivity = new Map();
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.screenTimer = undefined;
    /** @type {Record<PcRole, RTCIceCandidateInit[]>} server candidates that came too early */
    this.pendingCandidates = { publish: [], subscribe: [] };
    /** @type {((sdp: string) => void) | null} resolves the outstanding publish offer */
    this.onAnswer = null;
    /** Subscribe offers are applied strictly one after the other. */
    this.subscribeQueue = Promise.resolve();
    this.closed = false;
    this.leaving = false;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.pingTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.byeTimer = undefined;
    this.pingNonce = 0;
    this.lastHeard = 0;
    /** @type {Record<PcRole, boolean>} whether each peer connection ever connected */
    this.everConnected = { publish: false, subscribe: false };
    /** ICE restarts since a connection was last connected. */
    this.restarts = 0;
    this.lastRestartAt = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.disconnectTimer = undefined;
    /** @type {string | null} set when the server says our media cannot reach it */
    this.unreachable = null;
    /** @type {Map<number, () => void>} pongs awaited by `alive()` */
    this.pongWaiters = new Map();
  }

  /**
   * Connects, joins the room and starts publishing. Resolves with the `joined` message;
   * rejects with a ConfabError when the server refuses or cannot be reached. In a cluster the
   * node asked may answer `redirect`: the same join goes to the room's node, and everything
   * after (media, chat, reconnects of this client) happens there.
   * A redirect to a node that cannot be reached (it died a moment ago) sends the join back
   * to the node that redirected us, naming the dead node, which then moves the room.
   * @param {number} [hops]  redirects followed so far
   * @param {{url: string, node: string}} [fallback]  where to go if `this.url` cannot be reached
   * @returns {Promise<JoinedMessage>}
   */
  join(hops = 0, fallback) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let joined = false;
      let opened = false;
      const timer = setTimeout(() => {
        if (joined) return;
        reject(new ConfabError('closed', 'The server did not answer in time. Check your connection and try again.'));
        this.close('no answer from the server');
      }, JOIN_TIMEOUT_MS);
      ws.onopen = () => {
        opened = true;
        this.reached = true;
        /** @type {ClientMessage} */
        const join = { type: 'join', room: this.room, name: this.name };
        if (this.previousNode) join.previous_node = this.previousNode;
        if (this.identity) join.identity = this.identity;
        if (this.password) join.password = this.password;
        if (this.token) join.token = this.token;
        this.send(join);
      };
      ws.onmessage = (event) => {
        this.lastHeard = Date.now();
        /** @type {ServerMessage} */
        let msg;
        try {
          msg = JSON.parse(String(event.data));
        } catch {
          console.warn('confab: ignoring a non-JSON frame');
          return;
        }
        if (!joined && msg.type === 'redirect') {
          clearTimeout(timer);
          ws.onmessage = null;
          ws.onclose = null;
          ws.close(1000);
          if (hops >= MAX_REDIRECTS) {
            reject(new ConfabError('closed', 'The meeting servers keep sending this room elsewhere. Try again in a moment.'));
            this.close('too many redirects');
            return;
          }
          const back = { url: this.url, node: msg.node };
          this.url = msg.url;
          this.join(hops + 1, back).then(resolve, reject);
          return;
        }
        if (!joined && msg.type === 'error') {
          clearTimeout(timer);
          reject(new ConfabError(msg.code, msg.message));
          this.close(msg.message);
          return;
        }
        if (msg.type === 'joined') {
          joined = true;
          clearTimeout(timer);
          this.id = msg.id;
          this.uploadToken = msg.upload_token;
          this.role = msg.role ?? 'presenter';
          this.locked = Boolean(msg.locked);
          this.iceServers = iceServersFrom(msg.turn, new URL(this.url).hostname);
          this.node = msg.node ?? null;
          this.nodes = msg.nodes ?? [];
          for (const p of msg.participants) this.participants.set(p.id, p);
          this.startSession();
          resolve(msg);
          this.emit('joined', msg);
          return;
        }
        this.handle(msg);
      };
      ws.onclose = (event) => {
        if (!joined && !opened && fallback && hops < MAX_REDIRECTS) {
          // The node we were sent to is not there: back to the one that sent us, naming it.
          clearTimeout(timer);
          console.warn(`confab: ${this.url} cannot be reached; asking ${fallback.url} to move the room`);
          this.url = fallback.url;
          this.previousNode = fallback.node;
          this.join(hops + 1).then(resolve, reject);
          return;
        }
        if (!joined) {
          clearTimeout(timer);
          const why = `Could not reach the server (connection closed, code ${event.code}). Try again.`;
          reject(new ConfabError('closed', why));
        }
        const reason = this.unreachable ?? this.byeReason ?? (event.reason || 'the connection to the server was lost');
        this.close(reason, event.code === CLOSE_REMOVED);
      };
    });
  }

  /**
   * Tells the others whether our microphone and camera are on. Muting the microphone's track
   * itself is up to the caller (session.js), which owns the local media.
   * @param {{audio?: boolean, video?: boolean}} state
   */
  setState(state) {
    this.state = { ...this.state, ...state };
    if (!this.canPublish) return;
    this.send({ type: 'update', ...state });
  }

  /** Whether our role lets us send media (viewers only watch). */
  get canPublish() {
    return this.role !== 'viewer';
  }

  /**
   * Operator: stops participant `id`'s microphone (`audio`) or camera (`video`).
   * @param {string} id
   * @param {MediaKind} kind
   */
  mute(id, kind) {
    return this.send({ type: 'mute', id, kind });
  }

  /**
   * Operator: takes participant `id` out of the room.
   * @param {string} id
   */
  remove(id) {
    return this.send({ type: 'remove', id });
  }

  /**
   * Operator: locks (nobody new may join) or unlocks the room.
   * @param {boolean} locked
   */
  lock(locked) {
    return this.send({ type: 'lock', locked });
  }

  /** Operator: ends the meeting for everyone. */
  end() {
    return this.send({ type: 'end' });
  }

  /**
   * Sends `track` as `source` from now on (null: nothing). Microphone and camera swap tracks
   * on their existing sender without renegotiating; a screen share adds or removes its
   * tracks. Resolves when done (changes are applied in call order).
   * @param {Source} source
   * @param {MediaStreamTrack | null} track
   */
  setSource(source, track) {
    this.tracks.set(source, track);
    if (!this.canPublish) return this.publishQueue;
    return this.enqueuePublish(() => this.applySource(source));
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

  /**
   * The peer connections' statistics and which track each RTP stream (by mid) carries: the
   * subscribe side by participant, server track id and source, the publish side by our
   * source. For each received track also the simulcast layer we ask for (null: paused,
   * undefined: not asked yet) and whether it is a browser's camera that is on (its picture
   * should be moving).
   */
  async statsSnapshot() {
    const [sub, pub] = await Promise.all([
      this.subscribePc?.getStats().catch(() => null),
      this.publishPc?.getStats().catch(() => null),
    ]);
    /** @type {Map<string, {participant: string, track: string, source: Source, layer: number | null | undefined, cameraOn: boolean}>} */
    const remote = new Map();
    for (const [mid, owner] of this.remoteMids) {
      const source = this.sourcesOf(owner.participant).get(owner.track);
      if (!source) continue;
      const info = this.participants.get(owner.participant);
      remote.set(mid, {
        participant: owner.participant,
        track: owner.track,
        source,
        layer: this.layersAsked.get(owner.track),
        cameraOn: source === 'camera' && info?.kind === 'browser' && info.video,
      });
    }
    /** @type {Map<string, Source>} */
    const local = new Map();
    for (const t of this.publishPc?.getTransceivers() ?? []) {
      for (const [source, sender] of this.senders) if (t.sender === sender && t.mid) local.set(t.mid, source);
    }
    return {
      subscribe: sub ? [...sub.values()] : [],
      publish: pub ? [...pub.values()] : [],
      remote,
      local,
    };
  }

  /** Leaves the room: the server answers with `bye` and closes; we stop waiting after 2 s. */
  async leave() {
    const ws = this.ws;
    this.leaving = true;
    if (this.closed || !ws) {
      this.close('left');
      return;
    }
    const gone = new Promise((resolve) => {
      ws.addEventListener('close', resolve, { once: true });
      setTimeout(resolve, LEAVE_TIMEOUT_MS);
    });
    this.send({ type: 'leave' });
    await gone;
    this.close('left');
  }

  /**
   * Ends everything locally (idempotent) and dispatches `closed` once. Local tracks are not
   * stopped: they belong to the caller, who may publish them again on a new connection.
   * @param {string} reason
   * @param {boolean} [removed]  an operator ended our session
   */
  close(reason, removed = false) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    clearInterval(this.screenTimer);
    clearTimeout(this.byeTimer);
    clearTimeout(this.disconnectTimer);
    for (const done of this.pongWaiters.values()) done();
    this.pongWaiters.clear();
    this.publishPc?.close();
    this.subscribePc?.close();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    this.onAnswer = null;
    this.emit('closed', {
      reason,
      left: this.leaving,
      removed,
      unreachable: this.unreachable !== null,
      moved: this.moved,
    });
  }

  /**
   * Whether the server still answers on the signaling connection: a ping answered within
   * `timeoutMs`. After a network change the old socket may look open while it is dead.
   * @param {number} timeoutMs
   * @returns {Promise<boolean>}
   */
  alive(timeoutMs) {
    const nonce = ++this.pingNonce;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pongWaiters.delete(nonce);
        resolve(false);
      }, timeoutMs);
      this.pongWaiters.set(nonce, () => {
        clearTimeout(timer);
        this.pongWaiters.delete(nonce);
        resolve(!this.closed);
      });
      if (!this.send({ type: 'ping', nonce })) {
        clearTimeout(timer);
        this.pongWaiters.delete(nonce);
        resolve(false);
      }
    });
  }

  /**
   * Finds a new path for media without leaving the room (an ICE restart, RFC 8445 §9): the
   * publish connection offers again with new credentials, and the server is asked for a new
   * subscribe offer with new ones. Both then gather and check afresh over whatever works now
   * (UDP, ICE-TCP, a TURN relay). Called when a connection is `disconnected` for a while or
   * `failed` after it had worked, and by session.js when the network changes.
   * @param {string} reason
   */
  restartIce(reason) {
    if (this.closed || this.id === null) return;
    const now = Date.now();
    if (now - this.lastRestartAt < RESTART_INTERVAL_MS) return;
    if (this.restarts >= MAX_RESTARTS) {
      // Restarts are not helping: join from scratch (session.js reconnects).
      this.close(`the media connection could not be restored (${reason})`);
      return;
    }
    this.lastRestartAt = now;
    this.restarts += 1;
    console.info(`confab: ICE restart ${this.restarts} (${reason})`);
    this.emit('ice-restart', { reason });
    const publish = this.publishPc;
    if (publish && publish.remoteDescription && this.canPublish) {
      publish.restartIce();
      this.enqueuePublish(() => this.negotiatePublish());
    }
    if (this.subscribePc?.remoteDescription) this.send({ type: 'restart_ice' });
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
    this.lastHeard = Date.now();
    this.pingTimer = setInterval(() => {
      // The browser hides the server's WebSocket pings; our own pings get a `pong`, so a
      // connection that stays silent past the limit is dead even if the socket looks open.
      if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
        this.close('the connection to the server was lost');
        return;
      }
      this.send({ type: 'ping', nonce: ++this.pingNonce });
    }, PING_INTERVAL_MS);
    this.subscribePc = this.createPc('subscribe');
    this.screenTimer = setInterval(() => {
      if (this.screenActivity.size > 0) this.watchScreens().catch(() => {});
    }, 1_000);
    // A viewer's media would be refused: it never opens a publish connection.
    if (!this.canPublish) return;
    // The server starts everyone as microphone and camera off; say what we actually send,
    // before the tracks appear, so nobody shows us as muted with a hidden video.
    this.send({ type: 'update', audio: this.state.audio, video: this.state.video });
    this.enqueuePublish(async () => {
      const first = /** @type {Source[]} */ (['microphone', 'camera']).filter((s) => this.tracks.get(s));
      if (first.length > 0) {
        for (const source of first) this.addSender(source, /** @type {MediaStreamTrack} */ (this.tracks.get(source)));
        await this.negotiatePublish();
      }
      await this.applySource('screen');
      await this.applySource('screen-audio');
    });
  }

  /**
   * Runs `task` after every earlier publish change; failures are reported, not thrown at
   * later tasks.
   * @param {() => Promise<void>} task
   */
  enqueuePublish(task) {
    const run = this.publishQueue.then(task);
    this.publishQueue = run.catch((err) => {
      if (this.closed) return;
      console.error('confab: publishing failed', err);
      this.emit('server-error', { code: 'publish', message: String(err) });
    });
    return this.publishQueue;
  }

  /**
   * Makes the publish connection send what `this.tracks` says for `source`.
   * @param {Source} source
   */
  async applySource(source) {
    if (this.closed || this.id === null) return;
    const track = this.tracks.get(source) ?? null;
    const sender = this.senders.get(source);
    if (sender) {
      // Every source keeps its sender once it has one: a new device, the camera turned off,
      // a share stopped or started again is `replaceTrack`. (Taking a track out of the offer
      // would not end it on the server, which keeps forwarding it to everyone as a frozen
      // picture; a sender with no track simply sends nothing, and subscribers see its track
      // go muted.)
      await sender.replaceTrack(track);
      return;
    }
    if (!track) return;
    if (source === 'screen') await this.ensureCameraListed();
    if (source === 'screen-audio') {
      // A share's sound is told apart from a microphone by coming after the share's video.
      const listed = await this.waitForSelf(
        (p) => p.tracks.filter((t) => t.kind === 'video').length >= 2,
        CAMERA_LISTED_TIMEOUT_MS,
      );
      if (!listed) console.warn('confab: the screen share is not listed; its sound may show as a microphone');
    }
    if (this.closed || this.tracks.get(source) !== track) return;
    this.addSender(source, track);
    await this.negotiatePublish();
  }

  /**
   * Makes sure the server lists a camera track of ours before a screen share is published
   * (the convention at the top of this file). Without a camera track a black placeholder is
   * sent until the server lists it; then the camera's sender goes back to the real camera,
   * or to nothing while the camera is off.
   */
  async ensureCameraListed() {
    if (this.self?.tracks.some((t) => t.kind === 'video')) return;
    let placeholder = null;
    if (!this.tracks.get('camera')) {
      placeholder = this.placeholder();
      if (!placeholder) return;
    }
    const sending = /** @type {MediaStreamTrack} */ (this.tracks.get('camera') ?? placeholder);
    const sender = this.senders.get('camera');
    if (sender) {
      await sender.replaceTrack(sending);
    } else {
      this.addSender('camera', sending);
      await this.negotiatePublish();
    }
    await this.waitForSelf((p) => p.tracks.some((t) => t.kind === 'video'), CAMERA_LISTED_TIMEOUT_MS);
    if (placeholder) {
      await this.senders.get('camera')?.replaceTrack(this.tracks.get('camera') ?? null);
      placeholder.stop();
    }
  }

  /**
   * Resolves true once the server's view of us satisfies `ok`, false after `timeoutMs` or
   * when the session closes.
   * @param {(p: ParticipantInfo) => boolean} ok
   * @param {number} timeoutMs
   * @returns {Promise<boolean>}
   */
  waitForSelf(ok, timeoutMs) {
    if (this.self && ok(this.self)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (/** @type {boolean} */ result) => {
        clearTimeout(timer);
        this.removeEventListener('self-updated', check);
        this.removeEventListener('closed', closed);
        resolve(result);
      };
      const check = () => this.self && ok(this.self) && done(true);
      const closed = () => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.addEventListener('self-updated', check);
      this.addEventListener('closed', closed);
    });
  }

  /**
   * A sendonly transceiver for `source` with H.264 first (negotiated by the caller).
   * @param {Source} source
   * @param {MediaStreamTrack} track
   */
  addSender(source, track) {
    const pc = this.ensurePublishPc();
    /** @type {RTCRtpTransceiverInit} */
    const init = { direction: 'sendonly', streams: [this.publishStream] };
    const encodings = source === 'camera' ? simulcastEncodings(track.getSettings?.().height ?? 0) : null;
    if (encodings) init.sendEncodings = encodings;
    const transceiver = pc.addTransceiver(track, init);
    preferCodecs(transceiver, SOURCE_KIND[source]);
    this.senders.set(source, transceiver.sender);
  }

  ensurePublishPc() {
    if (!this.publishPc) this.publishPc = this.createPc('publish');
    return this.publishPc;
  }

  /**
   * A peer connection that trickles its candidates to the server under `role`.
   * @param {PcRole} role
   */
  createPc(role) {
    // The server is ICE-lite with host candidates (UDP, and ICE-TCP on the same port number):
    // no STUN needed. Its TURN relay, if it runs one, is for networks that let neither through.
    const pc = new RTCPeerConnection({
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
      iceServers: this.iceServers,
    });
    pc.onicecandidate = (event) => {
      const candidate = event.candidate ? event.candidate.toJSON() : { candidate: '' };
      this.send({
        type: 'candidate',
        pc: role,
        candidate: /** @type {IceCandidate} */ ({ candidate: '', ...candidate }),
      });
    };
    pc.onconnectionstatechange = () => {
      const state = pc.connectionState;
      this.emit('connection-state', { pc: role, state });
      clearTimeout(this.disconnectTimer);
      if (state === 'connected') {
        this.everConnected[role] = true;
        this.restarts = 0;
      } else if (state === 'disconnected') {
        // Often a blip; if it lasts, the path is gone (a network change, UDP cut off).
        this.disconnectTimer = setTimeout(() => {
          if (pc.connectionState === 'disconnected') this.restartIce(`${role} connection disconnected`);
        }, DISCONNECTED_GRACE_MS);
      } else if (state === 'failed') {
        if (this.everConnected[role]) {
          this.restartIce(`${role} connection failed`);
        } else {
          // Never got through at all: our network blocks media to the server. Joining again
          // would fail the same way (and fill the room's history with joins and leaves).
          this.unreachable = MEDIA_UNREACHABLE;
          this.close(MEDIA_UNREACHABLE);
        }
      }
    };
    return pc;
  }

  /**
   * One publish offer/answer round. Runs only inside `enqueuePublish`, so rounds never
   * overlap (the protocol allows one outstanding `publish`).
   */
  async negotiatePublish() {
    const pc = this.ensurePublishPc();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const answer = new Promise((resolve) => {
      this.onAnswer = resolve;
    });
    if (!this.send({ type: 'publish', sdp: /** @type {string} */ (pc.localDescription?.sdp) })) return;
    const sdp = /** @type {string} */ (await answer);
    if (pc.signalingState === 'closed') return;
    await pc.setRemoteDescription({ type: 'answer', sdp });
    await this.flushCandidates('publish');
  }

  /** @param {ServerMessage} msg */
  handle(msg) {
    switch (msg.type) {
      case 'participant_joined':
        this.participants.set(msg.participant.id, msg.participant);
        this.emit('participant-joined', { participant: msg.participant });
        this.updateFeeds(msg.participant.id);
        break;
      case 'participant_updated':
        if (msg.participant.id === this.id) {
          this.self = msg.participant;
          this.emit('self-updated', { participant: msg.participant });
          break;
        }
        this.participants.set(msg.participant.id, msg.participant);
        this.emit('participant-updated', { participant: msg.participant });
        this.updateFeeds(msg.participant.id);
        break;
      case 'participant_left':
        this.participants.delete(msg.id);
        this.feeds.delete(msg.id);
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
        if (msg.nonce !== undefined) this.pongWaiters.get(msg.nonce)?.();
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
        if (msg.code === 'media_unreachable') this.unreachable = MEDIA_UNREACHABLE;
        this.emit('server-error', { code: msg.code, message: msg.message });
        break;
      case 'muted':
        this.emit('muted', { kind: msg.kind, by: msg.by });
        break;
      case 'speaker':
        this.emit('active-speaker', { id: msg.id });
        break;
      case 'room_state':
        this.locked = msg.locked;
        this.emit('room-state', { locked: msg.locked, by: msg.by });
        break;
      case 'bye':
        // The close code that follows says whether an operator ended us (no coming back) or
        // the server is going away (reconnect); wait for it, briefly.
        this.byeReason = msg.reason;
        clearTimeout(this.byeTimer);
        this.byeTimer = setTimeout(() => this.close(msg.reason), LEAVE_TIMEOUT_MS);
        break;
      case 'joined':
        console.warn('confab: unexpected second joined');
        break;
      case 'redirect':
        console.warn('confab: unexpected redirect after joining');
        break;
      case 'layers':
        this.pauseLayers(msg.paused).catch((err) => console.warn('confab: pausing layers failed', err));
        break;
      case 'moved':
        // Our node is draining: the room goes on at `url`; session.js rejoins there at once.
        this.moved = { url: msg.url, node: msg.node, message: msg.message };
        this.close(msg.message);
        break;
    }
  }

  /**
   * @param {{sdp: string, revision: number, tracks: OfferedTrack[]}} offer
   */
  async applySubscribeOffer(offer) {
    const pc = this.subscribePc;
    if (!pc || pc.signalingState === 'closed') return;
    await pc.setRemoteDescription({ type: 'offer', sdp: offer.sdp });
    await this.flushCandidates('subscribe');
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this.send({
      type: 'subscribe_answer',
      revision: offer.revision,
      sdp: /** @type {string} */ (pc.localDescription?.sdp),
    });
    // Who sends what, from the offer itself: every active m-section names its publisher and
    // the server's track id; the offer's track list confirms it.
    const listed = new Set(offer.tracks.map((t) => `${t.participant}\n${t.track}`));
    const before = new Set([...this.remoteMids.values()].map((o) => o.participant));
    this.remoteMids.clear();
    for (const [mid, m] of msidsByMid(offer.sdp)) {
      if (m.active && (listed.size === 0 || listed.has(`${m.stream}\n${m.track}`))) {
        this.remoteMids.set(mid, { participant: m.stream, track: m.track });
      }
    }
    const now = new Set([...this.remoteMids.values()].map((o) => o.participant));
    for (const id of new Set([...before, ...now])) this.updateFeeds(id);
    this.applyVideoWidths();
  }

  /**
   * What the user lets others' video cost: `normal` (the layer each tile needs), `low` (the
   * smallest layer of every video), `audio` (no video at all).
   * @param {DataMode} mode
   */
  setDataMode(mode) {
    this.dataMode = mode;
    this.applyVideoWidths();
  }

  /**
   * Dynacast: nobody receives our simulcast layers `paused` (rids): pause their encoding and
   * run the others (the camera is our only source sent in layers).
   * @param {string[]} paused
   */
  async pauseLayers(paused) {
    for (const sender of this.senders.values()) {
      const params = sender.getParameters();
      if (!params.encodings || params.encodings.length < 2 || !params.encodings.every((e) => e.rid)) continue;
      let changed = false;
      for (const e of params.encodings) {
        const on = !paused.includes(/** @type {string} */ (e.rid));
        if (e.active !== on) {
          e.active = on;
          changed = true;
        }
      }
      if (changed) await sender.setParameters(params);
    }
  }

  /**
   * The page shows `participant`'s `source` video `width` device pixels wide (0: nowhere):
   * ask the server for the simulcast layer that fills it (a small tile gets the small
   * picture, which saves the bandwidth and the decoding of the large one), or for nothing.
   * @param {string} participant
   * @param {'camera' | 'screen'} source
   * @param {number} width
   */
  setVideoSize(participant, source, width) {
    this.videoWidths.set(`${participant}:${source}`, width);
    this.applyVideoWidths();
  }

  /** Sends the layer each shown video needs, for the tracks whose layer changed. */
  applyVideoWidths() {
    if (!this.subscribePc) return;
    /** @type {Map<string, ReturnType<ConfabClient['sourcesOf']>>} each participant's sources, worked out once */
    const sources = new Map();
    for (const t of this.subscribePc.getTransceivers()) {
      const owner = t.mid !== null ? this.remoteMids.get(t.mid) : undefined;
      if (!owner || t.receiver.track.kind !== 'video') continue;
      let of = sources.get(owner.participant);
      if (!of) {
        of = this.sourcesOf(owner.participant);
        sources.set(owner.participant, of);
      }
      const source = of.get(owner.track) === 'screen' ? 'screen' : 'camera';
      const width = this.videoWidths.get(`${owner.participant}:${source}`);
      if (width === undefined) continue;
      const layer = layerFor(width, this.dataMode);
      if (this.layersAsked.get(owner.track) === layer) continue;
      this.layersAsked.set(owner.track, layer);
      this.send({ type: 'quality', track: owner.track, layer });
    }
  }

  /**
   * The source of each track we receive from `participant`.
   * @param {string} participant
   */
  sourcesOf(participant) {
    /** @type {Array<{id: string, kind: MediaKind}>} */
    const received = [];
    for (const t of this.subscribePc?.getTransceivers() ?? []) {
      const owner = t.mid !== null ? this.remoteMids.get(t.mid) : undefined;
      if (owner?.participant === participant) {
        received.push({ id: owner.track, kind: t.receiver.track.kind === 'audio' ? 'audio' : 'video' });
      }
    }
    return trackSources(this.participants.get(participant), received);
  }

  /**
   * Regroups what we receive from `participant` into its camera and screen streams and
   * reports a change. A screen share counts only while its video is arriving: a stopped share
   * keeps its track on the server (the sharer just sends nothing), so silence is how it ends.
   * @param {string} participant
   */
  updateFeeds(participant) {
    if (participant === this.id || !this.subscribePc) return;
    const sources = this.sourcesOf(participant);
    const now = Date.now();
    /** @type {MediaStreamTrack[]} */
    const cameraTracks = [];
    /** @type {MediaStreamTrack[]} */
    const screenVideos = [];
    /** @type {MediaStreamTrack[]} */
    const screenAudios = [];
    for (const t of this.subscribePc.getTransceivers()) {
      const owner = t.mid !== null ? this.remoteMids.get(t.mid) : undefined;
      if (!owner || owner.participant !== participant || t.mid === null) continue;
      const source = sources.get(owner.track);
      if (source === 'screen') {
        let seen = this.screenActivity.get(t.mid);
        if (!seen) {
          seen = { frames: 0, at: now };
          this.screenActivity.set(t.mid, seen);
        }
        if (seen.frames > 0 && now - seen.at < SHARE_SILENCE_MS) screenVideos.push(t.receiver.track);
      } else if (source === 'screen-audio') {
        screenAudios.push(t.receiver.track);
      } else if (source) {
        cameraTracks.push(t.receiver.track);
      }
    }
    // One share per participant is shown: the newest that is live.
    const screenTracks = screenVideos.length > 0 ? [screenVideos[screenVideos.length - 1], ...screenAudios] : [];
    let feed = this.feeds.get(participant);
    if (!feed) {
      if (cameraTracks.length + screenTracks.length === 0) return;
      feed = { camera: new MediaStream(), screen: new MediaStream(), shown: '' };
      this.feeds.set(participant, feed);
    }
    syncTracks(feed.camera, cameraTracks);
    syncTracks(feed.screen, screenTracks);
    const hasScreen = screenTracks.length > 0;
    const shown = [...cameraTracks.map((t) => t.id), '|', ...screenTracks.map((t) => t.id)].join(',');
    if (shown === feed.shown) return;
    feed.shown = shown;
    this.emit('feeds', {
      participant,
      camera: cameraTracks.length > 0 ? feed.camera : null,
      screen: hasScreen ? feed.screen : null,
    });
  }

  /**
   * Once a second: which screen shares are receiving video (`updateFeeds` shows those).
   */
  async watchScreens() {
    const pc = this.subscribePc;
    if (!pc || this.closed) return;
    const now = Date.now();
    /** @type {Set<string>} */
    const owners = new Set();
    for (const t of pc.getTransceivers()) {
      const seen = t.mid !== null ? this.screenActivity.get(t.mid) : undefined;
      if (!seen || t.mid === null) continue;
      const owner = this.remoteMids.get(t.mid);
      if (!owner) {
        this.screenActivity.delete(t.mid);
        continue;
      }
      // Frames, not packets: a paused sender's connection still carries padding (bandwidth
      // probes) on the share's stream.
      let frames = 0;
      try {
        (await t.receiver.getStats()).forEach((s) => {
          if (s.type === 'inbound-rtp') {
            frames = Math.max(frames, Number(s.framesReceived ?? s.framesDecoded) || 0);
          }
        });
      } catch {
        continue;
      }
      if (frames > seen.frames) {
        seen.frames = frames;
        seen.at = now;
      }
      owners.add(owner.participant);
    }
    for (const id of owners) this.updateFeeds(id);
  }

  /**
   * @param {PcRole} role
   * @param {IceCandidate} candidate
   */
  addServerCandidate(role, candidate) {
    const pc = role === 'publish' ? this.publishPc : this.subscribePc;
    /** @type {RTCIceCandidateInit} */
    const init = {
      candidate: candidate.candidate,
      sdpMid: candidate.sdpMid ?? undefined,
      sdpMLineIndex: candidate.sdpMLineIndex ?? undefined,
      usernameFragment: candidate.usernameFragment ?? undefined,
    };
    if (init.sdpMid === undefined && init.sdpMLineIndex === undefined) init.sdpMLineIndex = 0;
    if (!pc?.remoteDescription) {
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

/**
 * Makes `stream` hold exactly `tracks`.
 * @param {MediaStream} stream
 * @param {MediaStreamTrack[]} tracks
 */
function syncTracks(stream, tracks) {
  for (const t of stream.getTracks()) if (!tracks.includes(t)) stream.removeTrack(t);
  for (const t of tracks) if (!stream.getTracks().includes(t)) stream.addTrack(t);
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
 * The simulcast layers a camera of `height` pixels is sent as: a quarter, half and full
 * picture from 540 lines up (720p: 320x180, 640x360, 1280x720), a half and full one from 270,
 * one stream below. The bitrate caps keep the small layers small; the server forwards one
 * layer to each viewer (docs/design.md, "Simulcast").
 * @param {number} height
 * @returns {RTCRtpEncodingParameters[] | null}
 */
export function simulcastEncodings(height) {
  if (height >= 540) {
    return [
      { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
      { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
      { rid: 'f', maxBitrate: 1_500_000 },
    ];
  }
  if (height >= 270) {
    return [
      { rid: 'q', scaleResolutionDownBy: 2, maxBitrate: 200_000 },
      { rid: 'f', maxBitrate: 800_000 },
    ];
  }
  return null;
}

/** @typedef {'normal' | 'low' | 'audio'} DataMode */

/**
 * The layer to ask for a video shown `width` device pixels wide (0: shown nowhere) under
 * `mode`; null asks for no video at all.
 * @param {number} width
 * @param {DataMode} mode
 * @returns {number | null}
 */
export function layerFor(width, mode) {
  if (width <= 0 || mode === 'audio') return null;
  return mode === 'low' ? 0 : layerForWidth(width);
}

/**
 * The layer (0 smallest) for a video shown `width` device pixels wide: the smallest whose
 * picture is at least about as wide (720p layers are 320, 640 and 1280 wide).
 * @param {number} width
 */
export function layerForWidth(width) {
  if (width <= 400) return 0;
  if (width <= 800) return 1;
  return 2;
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
