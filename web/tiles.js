// @ts-check
/**
 * Draws the participant tiles of the meeting page: one tile per participant's camera (with
 * its microphone), one per screen share; name labels, muted-microphone and camera-off
 * indicators, an initials placeholder while there is no picture, the active speaker's
 * highlight (`data-speaking="true"`, the speaker the server chose), pin (spotlight), full
 * screen, and a connection-quality badge with its detail view. Where the tiles go is
 * layout.js's business; what to show comes from room.js.
 *
 * The badge is a button (it opens the detail view) named "Connection of {label}: {rating}",
 * with the numbers in its tooltip. Inside it, signal bars (three lit: good, two: fair, one:
 * poor, so that the colour is not the only clue) are an image named "Connection: {rating}"
 * with `data-quality="good|fair|poor"` once measured (a button's content is presentational
 * to assistive technology, so the button's name is what is announced; the image's name is for
 * whatever reads the bars alone). On another's tile they tell how well their media reaches
 * us; on our own, how well ours reaches the server. Ratings come smoothed from session.js.
 *
 * Tiles carry `data-participant="{id}"` (camera tiles, as INTERFACE.md promises) or
 * `data-screen="{id}"` (screen shares), and `data-tile="{id}:camera|screen"` either way.
 * Everything that came over the network is put in with `textContent`.
 */
import { layoutTiles } from './layout.js';
import { describeQuality, FULL_LAYER } from './stats.js';

/** @typedef {import('./stats.js').Quality} Quality */

const ICONS = '/static/icons.svg';
const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * An icon from the sprite, hidden from assistive technology unless it gets a label.
 * @param {string} name
 * @param {string} [label]  makes it an image with this accessible name
 * @returns {SVGSVGElement}
 */
export function icon(name, label) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', `icon icon-${name}`);
  svg.setAttribute('viewBox', '0 0 24 24');
  if (label) {
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', label);
  } else {
    svg.setAttribute('aria-hidden', 'true');
  }
  svg.setAttribute('focusable', 'false');
  const use = document.createElementNS(SVG_NS, 'use');
  use.setAttribute('href', `${ICONS}#${name}`);
  svg.append(use);
  return svg;
}

/**
 * Up to two initials of a name, for the placeholder ("Ada Lovelace" → "AL", "bob" → "B").
 * @param {string} name
 */
export function initials(name) {
  const words = name.trim().split(/[\s._-]+/u).filter(Boolean);
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words.slice(0, 1);
  return letters.map((w) => [...w][0]?.toUpperCase() ?? '').join('') || '?';
}

/**
 * A stable hue for a name, so that a person keeps the colour of their placeholder.
 * @param {string} name
 */
export function hueOf(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + (ch.codePointAt(0) ?? 0)) % 360;
  return h;
}

/**
 * @typedef {object} TileInfo
 * @property {string} participant
 * @property {'camera' | 'screen'} source
 * @property {string} name         display name
 * @property {string} label        the caption, e.g. "Alice (you)"
 * @property {'browser' | 'camera'} kind
 * @property {boolean} self
 * @property {boolean} audio       microphone on
 * @property {boolean} video       picture on
 * @property {string | undefined} [state]  a bridged camera's state
 * @property {MediaStream | null} stream
 */

/**
 * @typedef {object} Tile
 * @property {string} key
 * @property {HTMLElement} el
 * @property {HTMLVideoElement} video
 * @property {HTMLElement} label
 * @property {HTMLElement} avatar
 * @property {SVGSVGElement} micOff
 * @property {SVGSVGElement} camOff
 * @property {HTMLButtonElement} qualityButton
 * @property {HTMLElement} qualityBars  the indicator: `data-quality`, named "Connection: …"
 * @property {HTMLElement} qualityDetail
 * @property {HTMLButtonElement} pinButton
 * @property {HTMLButtonElement} fullscreenButton
 * @property {HTMLButtonElement | null} menuButton  a camera tile's menu (Copy RTSP link)
 * @property {HTMLElement | null} menu
 * @property {ResizeObserver | null} sizes  reports the tile's width (others' tiles)
 * @property {IntersectionObserver | null} seen  reports a tile out of view (others' tiles)
 * @property {() => boolean} inView  whether the tile is in view (as `seen` last said)
 * @property {TileInfo} info
 * @property {number} order  for the layout: screens first, then self, then others by arrival
 */

/**
 * With more tiles than this, the active speaker is shown large (the spotlight layout) unless
 * the user pinned a tile or someone shares a screen: in a grid of small tiles the speaker is
 * hard to find, in a small meeting everyone is large enough.
 */
export const SPEAKER_VIEW_AFTER = 6;

/**
 * Events: `pin` `{key}` when the user pins or unpins (key null); `copy-rtsp` `{key,
 * participant}` when the user asks for a participant's RTSP link in its tile's menu (the page
 * fetches it and shows it with `showRtspLink`); `size` `{participant, source, width}` when
 * someone else's tile is shown at another width (device pixels; 0 when out of view), for the
 * simulcast layer.
 */
export class TileGrid extends EventTarget {
  /** @param {HTMLElement} grid */
  constructor(grid) {
    super();
    this.grid = grid;
    /** @type {Map<string, Tile>} */
    this.tiles = new Map();
    /** @type {string | null} pinned by the user */
    this.pinned = null;
    /** Screen shares the user unpinned: they are not spotlighted again by themselves. */
    this.dismissed = new Set();
    this.arrivals = 0;
    /** @type {string | null} the participant the server says is speaking */
    this.speaker = null;
    /** @type {string} */
    this.sinkId = '';
    new ResizeObserver(() => this.layout()).observe(grid);
  }

  /**
   * Creates or updates a tile.
   * @param {string} key
   * @param {TileInfo} info
   */
  upsert(key, info) {
    let tile = this.tiles.get(key);
    if (!tile) {
      tile = this.create(key, info);
      this.tiles.set(key, tile);
      this.layout();
    }
    tile.info = info;
    this.markSpeaking(tile);
    const { el, video } = tile;
    el.dataset.kind = info.kind;
    el.dataset.audio = String(info.audio);
    el.dataset.video = String(info.video);
    const hasPicture = info.video && Boolean(info.stream?.getVideoTracks().length);
    el.dataset.picture = String(hasPicture);
    tile.label.textContent = info.label;
    const avatarText = tile.avatar.firstElementChild;
    if (avatarText) avatarText.textContent = initials(info.name);
    tile.avatar.style.setProperty('--hue', String(hueOf(info.name)));
    tile.micOff.toggleAttribute('hidden', info.audio || info.source === 'screen');
    tile.camOff.toggleAttribute('hidden', info.video || info.source === 'screen');
    tile.pinButton.setAttribute('aria-label', `Pin ${info.label}`);
    tile.menuButton?.setAttribute('aria-label', `Options for ${info.label}`);
    tile.fullscreenButton.setAttribute('aria-label', `Show ${info.label} full screen`);
    const rating = tile.qualityBars.dataset.quality;
    tile.qualityButton.setAttribute(
      'aria-label',
      rating ? `Connection of ${info.label}: ${rating}` : `Connection of ${info.label}`,
    );
    // A bridged camera says how the bridge is doing with it; nothing to say while it is live.
    let state = el.querySelector('.state');
    if (info.kind === 'camera' && info.state && info.state !== 'live') {
      if (!state) {
        state = document.createElement('p');
        state.className = 'state';
        state.setAttribute('role', 'status');
        el.append(state);
      }
      state.textContent = info.state;
    } else {
      state?.remove();
    }
    if (video.srcObject !== info.stream) {
      video.srcObject = info.stream;
      if (info.stream) this.play(video, info.self);
    }
  }

  /**
   * @param {string} key
   * @param {TileInfo} info
   * @returns {Tile}
   */
  create(key, info) {
    const el = document.createElement('figure');
    el.className = 'tile';
    el.dataset.tile = key;
    el.dataset.source = info.source;
    if (info.source === 'camera') el.dataset.participant = info.participant;
    else el.dataset.screen = info.participant;
    if (info.self) el.classList.add('self');

    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    if (info.self) {
      video.muted = true;
      if (info.source === 'camera') video.classList.add('mirrored');
    }
    if (this.sinkId) setSink(video, this.sinkId);

    const avatar = document.createElement('div');
    avatar.className = 'avatar';
    avatar.setAttribute('aria-hidden', 'true');
    avatar.append(document.createElement('span'));

    const caption = document.createElement('figcaption');
    caption.className = 'caption';
    const micOff = icon('mic-off', 'Microphone off');
    const camOff = icon('cam-off', 'Camera off');
    micOff.classList.add('indicator');
    camOff.classList.add('indicator');
    const label = document.createElement('span');
    label.className = 'label';
    if (info.source === 'screen') caption.append(icon('screen'));
    caption.append(micOff, camOff, label);

    const tools = document.createElement('div');
    tools.className = 'tile-tools';
    const pinButton = toolButton('pin');
    pinButton.setAttribute('aria-pressed', 'false');
    pinButton.addEventListener('click', () => this.togglePin(key));
    const fullscreenButton = toolButton('fullscreen');
    fullscreenButton.addEventListener('click', () => fullscreen(el, video));
    tools.append(pinButton, fullscreenButton);
    const { menuButton, menu } = info.source === 'camera' ? this.tileMenu(key, info.participant) : { menuButton: null, menu: null };
    if (menuButton) tools.append(menuButton);

    const qualityButton = document.createElement('button');
    qualityButton.type = 'button';
    qualityButton.className = 'tool quality';
    qualityButton.setAttribute('aria-expanded', 'false');
    const qualityBars = document.createElement('span');
    qualityBars.className = 'quality-bars';
    qualityBars.setAttribute('role', 'img');
    qualityBars.setAttribute('aria-label', 'Connection: measuring');
    for (let i = 0; i < 3; i++) qualityBars.append(document.createElement('span'));
    qualityButton.append(qualityBars);
    const qualityDetail = document.createElement('div');
    qualityDetail.className = 'quality-detail';
    qualityDetail.id = `quality-${key.replace(/[^A-Za-z0-9_-]/g, '_')}`;
    qualityDetail.hidden = true;
    qualityDetail.setAttribute('role', 'group');
    qualityDetail.setAttribute('aria-label', 'Connection details');
    qualityButton.setAttribute('aria-controls', qualityDetail.id);
    qualityButton.addEventListener('click', () => {
      const open = qualityDetail.hidden;
      qualityDetail.hidden = !open;
      qualityButton.setAttribute('aria-expanded', String(open));
    });
    el.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !qualityDetail.hidden) {
        qualityDetail.hidden = true;
        qualityButton.setAttribute('aria-expanded', 'false');
        qualityButton.focus();
      }
      if (e.key === 'Escape' && menu && !menu.hidden) {
        menu.hidden = true;
        menuButton?.setAttribute('aria-expanded', 'false');
        menuButton?.focus();
      }
    });
    renderQuality(qualityDetail, null);

    el.append(video, avatar, caption, qualityButton, tools, qualityDetail);
    if (menu) el.append(menu);
    // Double-click a tile to pin it (the button does the same, by keyboard too).
    video.addEventListener('dblclick', () => this.togglePin(key));
    // On touch screens the tile's buttons stay out of the picture until the tile is tapped.
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let toolsTimer;
    el.addEventListener('click', (e) => {
      if (e.target instanceof Element && e.target.closest('button')) return;
      el.classList.add('show-tools');
      clearTimeout(toolsTimer);
      toolsTimer = setTimeout(() => el.classList.remove('show-tools'), 4_000);
    });

    const order =
      info.source === 'screen' ? (info.self ? 1e9 : -1e6 + this.arrivals) : info.self ? -1e5 : this.arrivals;
    this.arrivals += 1;
    let visible = true;
    const report = () => {
      const width = visible ? Math.round(el.clientWidth * (globalThis.devicePixelRatio || 1)) : 0;
      const detail = { participant: info.participant, source: info.source, width };
      this.dispatchEvent(new CustomEvent('size', { detail }));
    };
    const sizes = info.self ? null : new ResizeObserver(report);
    sizes?.observe(el);
    // A tile scrolled out of view (a large grid on a phone) is reported as shown nowhere.
    const seen = info.self
      ? null
      : new IntersectionObserver((entries) => {
          const now = entries.some((e) => e.isIntersecting);
          if (now !== visible) {
            visible = now;
            report();
          }
        });
    seen?.observe(el);
    const tile = {
      key,
      el,
      video,
      label,
      avatar,
      micOff,
      camOff,
      qualityButton,
      qualityBars,
      qualityDetail,
      pinButton,
      fullscreenButton,
      menuButton,
      menu,
      sizes,
      seen,
      inView: () => visible,
      info,
      order,
    };
    // Keep the document order (and so the keyboard order) the same as the layout order.
    const after = [...this.tiles.values()].filter((t) => t.order > order).sort((a, b) => a.order - b.order)[0];
    this.grid.insertBefore(el, after?.el ?? null);
    return tile;
  }

  /**
   * A camera tile's menu: **Copy RTSP link**, and where the link is shown with how to watch it
   * outside the browser.
   * @param {string} key
   * @param {string} participant
   */
  tileMenu(key, participant) {
    const menuButton = toolButton('more');
    menuButton.setAttribute('aria-expanded', 'false');
    const menu = document.createElement('div');
    menu.className = 'tile-menu';
    menu.id = `menu-${key.replace(/[^A-Za-z0-9_-]/g, '_')}`;
    menu.hidden = true;
    menu.setAttribute('role', 'group');
    menu.setAttribute('aria-label', 'Tile options');
    menuButton.setAttribute('aria-controls', menu.id);
    const copy = document.createElement('button');
    copy.type = 'button';
    copy.append(icon('link'), 'Copy RTSP link');
    const hint = document.createElement('p');
    hint.className = 'rtsp-hint';
    hint.textContent = 'Watch this tile outside the browser: in VLC (Media › Open Network Stream) or with ffplay.';
    const link = document.createElement('code');
    link.className = 'rtsp-link';
    link.hidden = true;
    menu.append(copy, hint, link);
    menuButton.addEventListener('click', () => {
      const open = menu.hidden;
      menu.hidden = !open;
      menuButton.setAttribute('aria-expanded', String(open));
      if (open) copy.focus();
    });
    copy.addEventListener('click', () => {
      this.dispatchEvent(new CustomEvent('copy-rtsp', { detail: { key, participant } }));
    });
    return { menuButton, menu };
  }

  /**
   * Shows the RTSP link of a tile (or why there is none) in its menu.
   * @param {string} key
   * @param {{url: string, copied: boolean} | {error: string}} result
   */
  showRtspLink(key, result) {
    const menu = this.tiles.get(key)?.menu;
    if (!menu) return;
    const hint = /** @type {HTMLElement} */ (menu.querySelector('.rtsp-hint'));
    const link = /** @type {HTMLElement} */ (menu.querySelector('.rtsp-link'));
    if ('error' in result) {
      hint.textContent = result.error;
      link.hidden = true;
      return;
    }
    hint.textContent = `${result.copied ? 'Copied. ' : 'Copy this link: '}Open it in VLC (Media › Open Network Stream), or run ffplay -rtsp_transport tcp with it.`;
    link.textContent = result.url;
    link.hidden = false;
  }

  /** The width (device pixels) each of the others' tiles is shown at now (0: out of view). */
  *widths() {
    for (const t of this.tiles.values()) {
      if (t.info.self) continue;
      const width = t.inView() ? Math.round(t.el.clientWidth * (globalThis.devicePixelRatio || 1)) : 0;
      yield { participant: t.info.participant, source: t.info.source, width };
    }
  }

  /** @param {string} key */
  remove(key) {
    const tile = this.tiles.get(key);
    if (!tile) return;
    tile.video.srcObject = null;
    tile.sizes?.disconnect();
    tile.seen?.disconnect();
    tile.el.remove();
    this.tiles.delete(key);
    if (this.pinned === key) this.pinned = null;
    this.layout();
  }

  /**
   * Removes every tile of `participant`.
   * @param {string} participant
   */
  removeParticipant(participant) {
    for (const [key, tile] of this.tiles) if (tile.info.participant === participant) this.remove(key);
  }

  clear() {
    for (const key of [...this.tiles.keys()]) this.remove(key);
    this.dismissed.clear();
    this.speaker = null;
  }

  /** @param {string} key */
  togglePin(key) {
    if (this.spotlightKey() === key) {
      // Unpinned: a screen share that came into the spotlight by itself stays out of it.
      this.pinned = null;
      this.dismissed.add(key);
    } else {
      this.pinned = key;
    }
    this.layout();
    this.dispatchEvent(new CustomEvent('pin', { detail: { key: this.spotlightKey() } }));
  }

  /**
   * The tile shown large: the pinned one, else the newest screen share of someone else, else
   * in a meeting of more than `SPEAKER_VIEW_AFTER` tiles the active speaker's.
   */
  spotlightKey() {
    if (this.pinned && this.tiles.has(this.pinned)) return this.pinned;
    const screens = [...this.tiles.values()]
      .filter((t) => t.info.source === 'screen' && !t.info.self && !this.dismissed.has(t.key))
      .sort((a, b) => a.order - b.order);
    if (screens[0]) return screens[0].key;
    return this.speakerViewKey();
  }

  /** The active speaker's tile, when the meeting is large enough to show it large. */
  speakerViewKey() {
    const key = this.speaker === null ? null : `${this.speaker}:camera`;
    if (key === null || !this.tiles.has(key) || this.tiles.size <= SPEAKER_VIEW_AFTER) return null;
    return key;
  }

  /** Positions every tile for the grid's current size. */
  layout() {
    const width = this.grid.clientWidth;
    const height = this.grid.clientHeight;
    if (width === 0 || height === 0) return;
    const tiles = [...this.tiles.values()].sort((a, b) => a.order - b.order);
    const spot = this.spotlightKey();
    const spotIndex = spot === null ? null : tiles.findIndex((t) => t.key === spot);
    const gap = width < 600 ? 6 : 10;
    const rects = layoutTiles({ count: tiles.length, width, height, spotlight: spotIndex, gap });
    this.grid.classList.toggle('spotlight', spot !== null && tiles.length > 1);
    tiles.forEach((tile, i) => {
      const r = rects[i];
      const s = tile.el.style;
      s.left = `${r.x}px`;
      s.top = `${r.y}px`;
      s.width = `${r.width}px`;
      s.height = `${r.height}px`;
      const main = tile.key === spot;
      tile.el.classList.toggle('main', main);
      tile.el.classList.toggle('speaker-view', main && spot === this.speakerViewKey());
      tile.el.classList.toggle('small', r.width < 200);
      tile.pinButton.setAttribute('aria-pressed', String(main));
    });
  }

  /**
   * The participant the server chose as the room's active speaker (null: none): its camera
   * tile gets `data-speaking="true"`, every other tile loses it.
   * @param {string | null} participant
   */
  setSpeaker(participant) {
    const changed = participant !== this.speaker;
    this.speaker = participant;
    for (const tile of this.tiles.values()) this.markSpeaking(tile);
    if (changed && this.tiles.size > SPEAKER_VIEW_AFTER) this.layout();
  }

  /** @param {Tile} tile */
  markSpeaking(tile) {
    const speaking = tile.info.source === 'camera' && tile.info.participant === this.speaker;
    if (speaking) tile.el.dataset.speaking = 'true';
    else delete tile.el.dataset.speaking;
  }

  /**
   * @param {Map<string, Quality>} quality  by tile key, rating smoothed (session.js)
   */
  setQuality(quality) {
    for (const [key, q] of quality) {
      const tile = this.tiles.get(key);
      if (!tile) continue;
      const known = q.rating !== 'unknown';
      if (known) tile.qualityBars.dataset.quality = q.rating;
      else delete tile.qualityBars.dataset.quality;
      const said = known ? q.rating : 'measuring';
      tile.qualityBars.setAttribute('aria-label', `Connection: ${said}`);
      tile.qualityButton.setAttribute('aria-label', `Connection of ${tile.info.label}${known ? `: ${q.rating}` : ''}`);
      tile.qualityButton.title = `Connection: ${said}. ${describeQuality(q)}`;
      renderQuality(tile.qualityDetail, q);
    }
  }

  /**
   * Plays every remote tile on this audio output (where the browser can choose).
   * @param {string} sinkId
   */
  setSink(sinkId) {
    this.sinkId = sinkId;
    for (const tile of this.tiles.values()) setSink(tile.video, sinkId);
  }

  /**
   * Starts playback; if the browser refuses sound without a user gesture, plays muted and
   * unmutes at the next click or key anywhere.
   * @param {HTMLVideoElement} video
   * @param {boolean} self
   */
  play(video, self) {
    video.play().catch((err) => {
      if (err?.name !== 'NotAllowedError' || self) return;
      video.muted = true;
      video.play().catch(() => {});
      const unmute = () => {
        video.muted = false;
      };
      document.addEventListener('pointerdown', unmute, { once: true, capture: true });
      document.addEventListener('keydown', unmute, { once: true, capture: true });
    });
  }
}

/**
 * A small icon button of a tile (its name is set by the caller).
 * @param {string} name
 */
function toolButton(name) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = `tool tool-${name}`;
  b.append(icon(name));
  return b;
}

/**
 * @param {HTMLVideoElement} video
 * @param {string} sinkId
 */
function setSink(video, sinkId) {
  /** @type {any} */
  const v = video;
  if (typeof v.setSinkId === 'function') v.setSinkId(sinkId).catch(() => {});
}

/**
 * Full screen for a tile; on iPhones only the video itself can go full screen.
 * @param {HTMLElement} el
 * @param {HTMLVideoElement} video
 */
function fullscreen(el, video) {
  if (document.fullscreenElement === el) {
    document.exitFullscreen().catch(() => {});
    return;
  }
  if (typeof el.requestFullscreen === 'function') {
    el.requestFullscreen().catch(() => {});
    return;
  }
  /** @type {any} */
  const v = video;
  if (typeof v.webkitEnterFullscreen === 'function') v.webkitEnterFullscreen();
}

/**
 * The detail view of a tile's connection.
 * @param {HTMLElement} el
 * @param {Quality | null} q
 */
function renderQuality(el, q) {
  const rows = q
    ? [
        ['Connection', q.rating === 'unknown' ? 'measuring…' : q.rating],
        ['Bitrate', q.bitrateKbps === null ? '—' : `${q.bitrateKbps} kbit/s`],
        ['Packet loss', q.lossPercent === null ? '—' : `${q.lossPercent}%`],
        ['Round trip', q.rttMs === null ? '—' : `${q.rttMs} ms`],
        ['Resolution', q.width > 0 ? `${q.width}×${q.height}` : '—'],
        ['Frame rate', q.fps > 0 ? `${q.fps} fps` : '—'],
        ['Picture', pictureState(q)],
        ['Transport', q.transport ?? '—'],
      ]
    : [['Connection', 'measuring…']];
  const dl = document.createElement('dl');
  for (const [k, v] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    dl.append(dt, dd);
  }
  el.replaceChildren(dl);
}

/**
 * What the detail view says of a camera picture: frozen, a smaller layer than its tile asked
 * for, or as asked for ("—" when not judged: our own tile, a share, a bridged camera).
 * @param {Quality} q
 */
function pictureState(q) {
  if (q.frozen) return 'frozen';
  if (q.layerRatio === null) return '—';
  return q.layerRatio < FULL_LAYER ? 'smaller than asked for' : 'as asked for';
}
