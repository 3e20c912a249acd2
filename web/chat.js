// @ts-check
/**
 * The chat of one room, without DOM: which messages exist, which of ours are still pending,
 * and the rules for sending them (docs/protocol.md, "Chat"). room.js draws what this module
 * reports; protocol.js carries the frames.
 *
 * Invariants:
 * - Every message we send gets a `client_id` and stays in the outbox (persisted in the tab's
 *   sessionStorage) until a `chat_ack` — or a stored copy in `history` — with that id arrives.
 *   On every (re)join the whole outbox is sent again with the same ids; the server
 *   acknowledges a repeat without delivering it twice, so resending is always safe.
 * - Messages are known by their server `id`; a message is reported once, whichever way
 *   (live, history, ack) it comes first.
 * - Sending is paced below the server's limit (10 per second, bursts of 20) so a long outbox
 *   flushed after a reconnect is not refused; if the server refuses anyway (`rate_limited`),
 *   everything unacknowledged goes out again after a pause.
 *
 * Events (`CustomEvent`s, payload in `detail`):
 * - `message`: `{message: ChatMessage, live: boolean}` — a message to show; `live` is false
 *   for history
 * - `pending`: `{entry: OutboxEntry}` — one of ours, not yet stored by the server
 * - `sent`: `{clientId, message: ChatMessage}` — that pending one is stored as `message`
 * - `failed`: `{clientId, reason}` — the server refused that pending one for good
 * - `more`: `{more: boolean}` — whether older history exists on the server
 */

/** @typedef {import('./protocol.js').ChatMessage} ChatMessage */
/** @typedef {import('./protocol.js').ConfabClient} ConfabClient */

/**
 * One of our messages on its way to the server.
 * @typedef {object} OutboxEntry
 * @property {string} clientId
 * @property {string} text
 * @property {string | null} to    participant id for a private message
 * @property {string | null} toName  the recipient's display name when it was sent
 * @property {number} createdAt  local clock, ms since the epoch (shown until the server's `ts`)
 */

/** The server refuses texts longer than this (Unicode characters, after trimming). */
export const MAX_TEXT_CHARS = 4000;
/** Images the server serves inline and the chat previews. */
export const PREVIEW_MIME_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];
/** Identity secrets are 16–128 characters; ours are 32 hex digits. */
const IDENTITY_KEY = 'confab.identity';
const IDENTITY_RE = /^[0-9a-f]{32}$/;

/**
 * Checks a text the way the server will (trimmed, 1–4000 characters), so that refusals are
 * caught before sending.
 * @param {string} raw
 * @returns {{ok: true, text: string} | {ok: false, error: string}}
 */
export function checkText(raw) {
  const text = raw.trim();
  if (text === '') return { ok: false, error: 'Type a message first.' };
  const chars = [...text].length;
  if (chars > MAX_TEXT_CHARS) {
    return {
      ok: false,
      error: `Messages can be at most ${MAX_TEXT_CHARS} characters; this one has ${chars}. Split it or send it as a file.`,
    };
  }
  return { ok: true, text };
}

/**
 * An absolute http(s) URL for `raw` resolved against `base`, or null for anything else
 * (`javascript:`, `data:`, garbage). Only such URLs become links or image sources.
 * @param {string} raw
 * @param {string} [base]
 * @returns {string | null}
 */
export function safeHttpUrl(raw, base) {
  let url;
  try {
    url = new URL(raw, base);
  } catch {
    return null;
  }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
}

/**
 * A shared file's address with the room token that opens it (`?token=`, needed in protected
 * rooms). The token goes only to the page's own server: a file address on another origin is
 * returned unchanged.
 * @param {string} url  an absolute http(s) address (see `safeHttpUrl`)
 * @param {string | null} token
 * @param {string} origin  the page's origin
 */
export function fileUrlWithToken(url, token, origin) {
  if (!token) return url;
  let u;
  try {
    u = new URL(url);
  } catch {
    return url;
  }
  if (u.origin !== origin) return url;
  u.searchParams.set('token', token);
  return u.href;
}

/** Candidate links: a scheme, `://`, then anything up to whitespace or an angle/quote mark. */
const LINK_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

/**
 * Splits text into plain runs and http(s) links. Trailing punctuation that usually ends a
 * sentence rather than a URL (`.`, `,`, `)` without a matching `(`, …) stays outside the link.
 * @param {string} text
 * @returns {Array<{text: string, href?: string}>}
 */
export function linkify(text) {
  /** @type {Array<{text: string, href?: string}>} */
  const out = [];
  let plainFrom = 0;
  for (const match of text.matchAll(LINK_RE)) {
    const start = /** @type {number} */ (match.index);
    let candidate = match[0];
    for (;;) {
      const last = candidate.at(-1) ?? '';
      const unbalanced =
        last === ')' && candidate.split('(').length < candidate.split(')').length;
      if ('.,;:!?\'"]}'.includes(last) || unbalanced) candidate = candidate.slice(0, -1);
      else break;
    }
    const href = safeHttpUrl(candidate);
    if (!href) continue;
    if (start > plainFrom) out.push({ text: text.slice(plainFrom, start) });
    out.push({ text: candidate, href });
    plainFrom = start + candidate.length;
  }
  if (plainFrom < text.length) out.push({ text: text.slice(plainFrom) });
  return out;
}

/**
 * "2.4 MB" and friends.
 * @param {number} bytes
 */
export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/**
 * The identity secret of this browser (per origin), created on first use. Without storage it
 * is a fresh one per page, which only means private messages do not survive a reload.
 * @param {Pick<Storage, 'getItem' | 'setItem'> | null} storage
 * @param {() => Uint8Array} [random]  16 random bytes
 */
export function loadIdentity(storage, random = () => crypto.getRandomValues(new Uint8Array(16))) {
  try {
    const stored = storage?.getItem(IDENTITY_KEY);
    if (stored && IDENTITY_RE.test(stored)) return stored;
  } catch {
    // Storage disabled: fall through to a per-page identity.
  }
  const fresh = [...random()].map((b) => b.toString(16).padStart(2, '0')).join('');
  try {
    storage?.setItem(IDENTITY_KEY, fresh);
  } catch {
    // As above.
  }
  return fresh;
}

/**
 * Our unsent and unacknowledged messages, and when each may go out. Pure: it is told the
 * time and answers what to send; the caller sends and sets the timers.
 *
 * Pacing is a token bucket that stays below the server's (10/s, burst 20), so a flush after
 * a reconnect is never refused for speed.
 */
export class Outbox {
  /**
   * @param {object} [options]
   * @param {OutboxEntry[]} [options.entries]  restored from storage, oldest first
   * @param {number} [options.burst]
   * @param {number} [options.perSecond]
   * @param {number} [options.backoffMs]  pause after the server said `rate_limited`
   */
  constructor({ entries = [], burst = 10, perSecond = 5, backoffMs = 2_000 } = {}) {
    /** @type {Map<string, OutboxEntry>} insertion order = send order */
    this.entries = new Map(entries.map((e) => [e.clientId, e]));
    /** @type {Set<string>} entries sent on the current connection and not yet acknowledged */
    this.inFlight = new Set();
    this.online = false;
    this.burst = burst;
    this.perSecond = perSecond;
    this.backoffMs = backoffMs;
    this.tokens = burst;
    this.tokensAt = 0;
    this.blockedUntil = 0;
  }

  /** @param {OutboxEntry} entry */
  add(entry) {
    this.entries.set(entry.clientId, entry);
  }

  /**
   * The server stored it (`chat_ack`, or our message showed up in history). Returns the
   * entry if it was still waiting.
   * @param {string} clientId
   */
  ack(clientId) {
    const entry = this.entries.get(clientId);
    this.entries.delete(clientId);
    this.inFlight.delete(clientId);
    return entry;
  }

  /**
   * A new connection joined: everything is sent (again).
   * @param {number} now
   */
  connected(now) {
    this.online = true;
    this.inFlight.clear();
    this.tokens = this.burst;
    this.tokensAt = now;
  }

  disconnected() {
    this.online = false;
    this.inFlight.clear();
  }

  /**
   * The server refused a message for speed: resend all unacknowledged ones after a pause.
   * @param {number} now
   */
  rateLimited(now) {
    this.inFlight.clear();
    // One token at the end of the pause, refilling from there.
    this.tokens = 1;
    this.tokensAt = now + this.backoffMs;
    this.blockedUntil = now + this.backoffMs;
  }

  /**
   * The server refused one of the messages in flight for good (`bad_text`,
   * `unknown_recipient`). Errors carry no client_id, so this picks the oldest in-flight entry
   * that `matches`, else the oldest in flight, and drops it.
   * @param {(e: OutboxEntry) => boolean} matches
   * @returns {OutboxEntry | undefined}
   */
  refuseOne(matches) {
    const flying = [...this.inFlight].map((id) => /** @type {OutboxEntry} */ (this.entries.get(id)));
    const entry = flying.find(matches) ?? flying[0];
    if (entry) this.ack(entry.clientId);
    return entry;
  }

  /**
   * What to send now, oldest first, and when to ask again (null: nothing is waiting).
   * @param {number} now
   * @returns {{send: OutboxEntry[], wakeAt: number | null}}
   */
  poll(now) {
    if (!this.online) return { send: [], wakeAt: null };
    const waiting = [...this.entries.values()].filter((e) => !this.inFlight.has(e.clientId));
    if (waiting.length === 0) return { send: [], wakeAt: null };
    if (now < this.blockedUntil) return { send: [], wakeAt: this.blockedUntil };
    const elapsed = Math.max(0, now - this.tokensAt);
    this.tokens = Math.min(this.burst, this.tokens + (elapsed / 1000) * this.perSecond);
    this.tokensAt = Math.max(now, this.tokensAt);
    const send = waiting.slice(0, Math.floor(this.tokens));
    this.tokens -= send.length;
    for (const e of send) this.inFlight.add(e.clientId);
    const left = waiting.length - send.length;
    const wakeAt = left > 0 ? now + Math.ceil(((1 - this.tokens) / this.perSecond) * 1000) : null;
    return { send, wakeAt };
  }
}

/**
 * The chat of one room across (re)connections: attach each new ConfabClient.
 */
export class Chat extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.room
   * @param {Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null} [options.storage]
   *   keeps the outbox across reloads (the tab's sessionStorage)
   * @param {() => string} [options.newClientId]
   * @param {() => number} [options.now]
   */
  constructor({
    room,
    storage = null,
    newClientId = () => crypto.randomUUID(),
    now = () => Date.now(),
  }) {
    super();
    this.storageKey = `confab.outbox.${room}`;
    this.storage = storage;
    this.newClientId = newClientId;
    this.now = now;
    this.outbox = new Outbox({ entries: this.restore() });
    /** @type {Set<number>} ids of the messages already reported */
    this.seen = new Set();
    /** @type {number | null} the oldest message id we have; `history` asks before it */
    this.oldestId = null;
    this.more = false;
    /** @type {ConfabClient | null} */
    this.client = null;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    this.timerAt = Infinity;
    /** Restored entries are reported once, at the first join. */
    this.restoredReported = false;
  }

  /** Our pending messages, oldest first. */
  pending() {
    return [...this.outbox.entries.values()];
  }

  /**
   * Listens to a client (before its `join()`); a later client replaces it.
   * @param {ConfabClient} client
   */
  attach(client) {
    this.client = client;
    /** @param {Event} e */
    const detail = (e) => /** @type {CustomEvent} */ (e).detail;
    const mine = () => this.client === client;
    client.addEventListener('joined', () => mine() && this.onJoined());
    client.addEventListener('closed', () => mine() && this.outbox.disconnected());
    client.addEventListener('chat', (e) => mine() && this.receive(detail(e).message, true));
    client.addEventListener('chat-ack', (e) => mine() && this.onAck(detail(e).client_id, detail(e).message));
    client.addEventListener('history', (e) => mine() && this.onHistory(detail(e).messages, detail(e).more));
    client.addEventListener('server-error', (e) => mine() && this.onServerError(detail(e).code));
  }

  /**
   * Queues a message (already checked with checkText) and sends it when it may go.
   * @param {string} text
   * @param {{id: string, name: string} | null} to  null for everyone
   * @returns {OutboxEntry}
   */
  send(text, to) {
    /** @type {OutboxEntry} */
    const entry = {
      clientId: this.newClientId(),
      text,
      to: to?.id ?? null,
      toName: to?.name ?? null,
      createdAt: this.now(),
    };
    this.outbox.add(entry);
    this.save();
    this.emit('pending', { entry });
    this.flush();
    return entry;
  }

  /** Asks for the messages before the oldest we have; false if there is nothing to ask for. */
  loadOlder() {
    if (!this.more || this.oldestId === null || !this.client) return false;
    return this.client.requestHistory(this.oldestId);
  }

  // ---- internals ----

  onJoined() {
    if (!this.restoredReported) {
      this.restoredReported = true;
      for (const entry of this.outbox.entries.values()) this.emit('pending', { entry });
    }
    this.outbox.connected(this.now());
    this.flush();
  }

  /**
   * @param {ChatMessage} message
   * @param {boolean} live
   */
  receive(message, live) {
    // A stored copy of a pending message of ours (its ack was lost to a reconnect).
    if (message.client_id && this.outbox.entries.has(message.client_id)) {
      this.onAck(message.client_id, message);
      return;
    }
    if (!this.note(message)) return;
    this.emit('message', { message, live });
  }

  /**
   * @param {string} clientId
   * @param {ChatMessage} message
   */
  onAck(clientId, message) {
    const entry = this.outbox.ack(clientId);
    if (entry) this.save();
    const fresh = this.note(message);
    if (entry) this.emit('sent', { clientId, message });
    // An ack for something we do not show (another tab of ours resent it): show it once.
    else if (fresh) this.emit('message', { message, live: true });
    this.flush();
  }

  /**
   * @param {ChatMessage[]} messages
   * @param {boolean} more
   */
  onHistory(messages, more) {
    const before = this.oldestId;
    for (const m of messages) this.receive(m, false);
    // `more` describes what lies before this batch; a batch newer than what we already have
    // (the one sent at a rejoin) says nothing about our oldest.
    const oldestInBatch = messages.length > 0 ? messages[0].id : null;
    if (before === null || oldestInBatch === null || oldestInBatch <= before) {
      this.more = more && this.oldestId !== null;
      this.emit('more', { more: this.more });
    }
  }

  /** @param {string} code */
  onServerError(code) {
    if (code === 'rate_limited') {
      this.outbox.rateLimited(this.now());
      this.flush();
    } else if (code === 'bad_text' || code === 'unknown_recipient') {
      const entry = this.outbox.refuseOne((e) =>
        code === 'unknown_recipient' ? e.to !== null : !checkText(e.text).ok,
      );
      if (!entry) return;
      this.save();
      const reason =
        code === 'unknown_recipient'
          ? `${entry.toName ?? entry.to} is no longer in the room`
          : 'the server refused the text';
      this.emit('failed', { clientId: entry.clientId, reason });
      this.flush();
    }
  }

  /**
   * Records a message id; false if it was seen before.
   * @param {ChatMessage} message
   */
  note(message) {
    if (this.seen.has(message.id)) return false;
    this.seen.add(message.id);
    if (this.oldestId === null || message.id < this.oldestId) this.oldestId = message.id;
    return true;
  }

  flush() {
    const client = this.client;
    if (!client) return;
    const { send, wakeAt } = this.outbox.poll(this.now());
    for (const e of send) {
      if (!client.sendChat(e.text, e.to, e.clientId)) {
        // The socket is gone; `closed` follows and the next join sends everything again.
        this.outbox.disconnected();
        return;
      }
    }
    if (wakeAt !== null && wakeAt < this.timerAt) {
      clearTimeout(this.timer);
      this.timerAt = wakeAt;
      this.timer = setTimeout(() => {
        this.timerAt = Infinity;
        this.flush();
      }, Math.max(0, wakeAt - this.now()));
    }
  }

  /** @returns {OutboxEntry[]} */
  restore() {
    try {
      const raw = this.storage?.getItem(this.storageKey);
      const parsed = raw ? JSON.parse(raw) : [];
      return Array.isArray(parsed) ? parsed.filter(isOutboxEntry) : [];
    } catch {
      return [];
    }
  }

  save() {
    try {
      if (this.outbox.entries.size === 0) this.storage?.removeItem(this.storageKey);
      else this.storage?.setItem(this.storageKey, JSON.stringify(this.pending()));
    } catch {
      // Storage full or disabled: pending messages then survive reconnects, not reloads.
    }
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * @param {any} e
 * @returns {e is OutboxEntry}
 */
function isOutboxEntry(e) {
  return (
    typeof e?.clientId === 'string' &&
    typeof e.text === 'string' &&
    (e.to === null || typeof e.to === 'string') &&
    (e.toName === null || typeof e.toName === 'string') &&
    typeof e.createdAt === 'number'
  );
}
