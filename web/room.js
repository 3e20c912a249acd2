// @ts-check
/**
 * The meeting page (`/r/{room}`): draws the prejoin view, the participant grid and the
 * controls, and hosts the chat panel (drawn by chat-view.js). All networking is in
 * protocol.js, the chat's state in chat.js; this file only turns their events into DOM.
 */
import { Chat, loadIdentity } from './chat.js';
import { ChatView } from './chat-view.js';
import { ConfabClient } from './protocol.js';

/** @typedef {import('./protocol.js').ParticipantInfo} ParticipantInfo */

const NAME_KEY = 'confab.name';
const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
function byId(id, type) {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`room.html lacks #${id}`);
  return el;
}

const ui = {
  roomTitle: byId('room-title', HTMLElement),
  prejoin: byId('prejoin', HTMLElement),
  preview: byId('preview', HTMLVideoElement),
  previewStatus: byId('preview-status', HTMLElement),
  form: byId('join-form', HTMLFormElement),
  name: byId('name', HTMLInputElement),
  join: byId('join', HTMLButtonElement),
  joinError: byId('join-error', HTMLElement),
  meeting: byId('meeting', HTMLElement),
  grid: byId('grid', HTMLElement),
  mic: byId('mic', HTMLButtonElement),
  cam: byId('cam', HTMLButtonElement),
  leave: byId('leave', HTMLButtonElement),
  ended: byId('ended', HTMLElement),
  endedReason: byId('ended-reason', HTMLElement),
  rejoin: byId('rejoin', HTMLAnchorElement),
  chat: {
    panel: byId('chat', HTMLElement),
    log: byId('chat-log', HTMLElement),
    older: byId('chat-older', HTMLButtonElement),
    form: byId('chat-form', HTMLFormElement),
    to: byId('chat-to', HTMLSelectElement),
    attach: byId('chat-attach', HTMLButtonElement),
    file: byId('chat-file', HTMLInputElement),
    text: byId('chat-text', HTMLTextAreaElement),
    status: byId('chat-status', HTMLElement),
    toggle: byId('chat-toggle', HTMLButtonElement),
    unread: byId('chat-unread', HTMLElement),
  },
};

const room = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() ?? '');
document.title = `${room} · confab`;
ui.roomTitle.textContent = room;
ui.name.value = new URLSearchParams(location.search).get('name') ?? storedName();
ui.rejoin.href = location.href;

/** Local camera + microphone, or null when the browser gives us neither (viewer). */
const localMedia = openLocalMedia();
localMedia.then((stream) => {
  ui.preview.srcObject = stream;
  ui.previewStatus.textContent = stream
    ? 'Camera and microphone ready'
    : 'No camera or microphone: you will join as a viewer';
});

if (!ROOM_RE.test(room)) {
  ui.joinError.textContent =
    'Room names are 1–64 letters, digits, dots, dashes or underscores. Pick another on the start page.';
  ui.join.disabled = true;
}

/** @type {ConfabClient | null} */
let client = null;

/** The chat outlives one connection: its outbox is resent after a rejoin or reload. */
const chat = new Chat({ room, storage: storageOf('sessionStorage') });
const chatView = new ChatView(ui.chat, chat, (file) => {
  if (!client) return Promise.reject(new Error('Join the room before sending files.'));
  return client.uploadFile(file);
});

ui.form.addEventListener('submit', (event) => {
  event.preventDefault();
  join().catch((err) => console.error('confab: join failed', err));
});

async function join() {
  const name = ui.name.value.trim();
  if (!name) return;
  storeName(name);
  ui.join.disabled = true;
  ui.joinError.textContent = '';
  const stream = await localMedia;
  const identity = loadIdentity(storageOf('localStorage'));
  const c = new ConfabClient({ room, name, stream, identity });
  client = c;
  // A debug handle for people and browser tests (peer connections, id, streams).
  /** @type {any} */ (window).confab = c;
  listen(c);
  try {
    const joined = await c.join();
    enterMeeting(c, joined.id, joined.participants, stream);
  } catch (err) {
    client = null;
    ui.joinError.textContent = err instanceof Error ? err.message : String(err);
    ui.join.disabled = false;
  }
}

/** @param {ConfabClient} c */
function listen(c) {
  /** @param {Event} e */
  const detail = (e) => /** @type {CustomEvent} */ (e).detail;
  // Before the chat's own listener: messages restored at join are drawn as ours.
  c.addEventListener('joined', (e) => {
    chatView.setSelf(detail(e).id, c.name);
    chatView.setParticipants(detail(e).participants);
  });
  chat.attach(c);
  c.addEventListener('participant-joined', (e) => {
    showParticipant(detail(e).participant);
    chatView.participantSeen(detail(e).participant);
  });
  c.addEventListener('participant-updated', (e) => {
    showParticipant(detail(e).participant);
    chatView.participantSeen(detail(e).participant);
  });
  c.addEventListener('participant-left', (e) => {
    tileOf(detail(e).id)?.remove();
    chatView.participantLeft(detail(e).id);
  });
  c.addEventListener('remote-track', (e) => {
    const { participant, stream } = detail(e);
    const video = ensureTile(participant).querySelector('video');
    if (video && video.srcObject !== stream) video.srcObject = stream;
    if (video) play(video);
  });
  c.addEventListener('server-error', (e) => console.warn('confab:', detail(e).message));
}

/**
 * @param {ConfabClient} c
 * @param {string} selfId
 * @param {ParticipantInfo[]} others
 * @param {MediaStream | null} stream
 */
function enterMeeting(c, selfId, others, stream) {
  ui.prejoin.hidden = true;
  ui.meeting.hidden = false;
  ui.preview.srcObject = null;

  const self = ensureTile(selfId);
  self.classList.add('self');
  ui.grid.prepend(self);
  const audioTracks = stream?.getAudioTracks().length ?? 0;
  const videoTracks = stream?.getVideoTracks().length ?? 0;
  setLabel(self, `${c.name} (you)`, { audio: audioTracks > 0, video: videoTracks > 0 });
  const video = /** @type {HTMLVideoElement} */ (self.querySelector('video'));
  video.muted = true;
  video.classList.add('mirrored');
  video.srcObject = stream;
  for (const p of others) showParticipant(p);

  setupToggle(ui.mic, audioTracks, (on) => {
    c.setMicrophone(on);
    self.dataset.audio = String(on);
  });
  setupToggle(ui.cam, videoTracks, (on) => {
    c.setCamera(on);
    self.dataset.video = String(on);
  });
  // The meeting view goes at once; the goodbye to the server finishes in the background.
  ui.leave.onclick = () => {
    endMeeting('left');
    c.leave();
  };
  // Registered only now: a failed join closes the client too, but stays on the prejoin view.
  c.addEventListener('closed', (e) => endMeeting(/** @type {CustomEvent} */ (e).detail.reason));
}

/** @param {string} reason */
function endMeeting(reason) {
  // The first reason wins: after a click on Leave, the server's `bye` changes nothing.
  if (!ui.ended.hidden) return;
  client = null;
  localMedia.then((stream) => stream?.getTracks().forEach((t) => t.stop()));
  ui.grid.replaceChildren();
  ui.prejoin.hidden = true;
  ui.meeting.hidden = true;
  ui.ended.hidden = false;
  ui.endedReason.textContent =
    reason === 'left' ? 'You left the meeting.' : `The meeting ended: ${reason}.`;
}

/**
 * @param {HTMLButtonElement} button
 * @param {number} trackCount
 * @param {(on: boolean) => void} apply
 */
function setupToggle(button, trackCount, apply) {
  button.disabled = trackCount === 0;
  button.setAttribute('aria-pressed', String(trackCount > 0));
  button.onclick = () => {
    const on = button.getAttribute('aria-pressed') !== 'true';
    button.setAttribute('aria-pressed', String(on));
    apply(on);
  };
}

/** @param {ParticipantInfo} p */
function showParticipant(p) {
  let text = p.kind === 'camera' ? `${p.name} (camera)` : p.name;
  if (p.id === client?.id) text += ' (you)';
  const tile = ensureTile(p.id);
  tile.dataset.kind = p.kind;
  setLabel(tile, text, p);
  // A camera says how the bridge is doing with it; nothing to say while it is simply live.
  let state = tile.querySelector('.state');
  if (p.kind === 'camera' && p.state && p.state !== 'live') {
    if (!state) {
      state = document.createElement('p');
      state.className = 'state';
      state.setAttribute('role', 'status');
      tile.append(state);
    }
    state.textContent = p.state;
  } else {
    state?.remove();
  }
}

/**
 * @param {HTMLElement} tile
 * @param {string} text
 * @param {{audio: boolean, video: boolean}} state
 */
function setLabel(tile, text, state) {
  const label = /** @type {HTMLElement} */ (tile.querySelector('.label'));
  label.textContent = text;
  tile.dataset.audio = String(state.audio);
  tile.dataset.video = String(state.video);
}

/** @param {string} id */
function tileOf(id) {
  return ui.grid.querySelector(`[data-participant="${CSS.escape(id)}"]`);
}

/**
 * The tile of a participant, created on first sight (a track can arrive before its owner's
 * `participant_joined`).
 * @param {string} id
 * @returns {HTMLElement}
 */
function ensureTile(id) {
  const existing = tileOf(id);
  if (existing instanceof HTMLElement) return existing;
  const tile = document.createElement('figure');
  tile.className = 'tile';
  tile.dataset.participant = id;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  const label = document.createElement('figcaption');
  label.className = 'label';
  label.textContent = id;
  tile.append(video, label);
  ui.grid.append(tile);
  return tile;
}

/**
 * Starts playback; if the browser refuses sound without a user gesture, plays muted and
 * unmutes at the next click anywhere.
 * @param {HTMLVideoElement} video
 */
function play(video) {
  video.play().catch((err) => {
    if (err?.name !== 'NotAllowedError') return;
    video.muted = true;
    video.play().catch(() => {});
    document.addEventListener('click', () => (video.muted = false), { once: true });
  });
}

/** @returns {Promise<MediaStream | null>} */
async function openLocalMedia() {
  const devices = navigator.mediaDevices;
  if (!devices?.getUserMedia) return null;
  /** @type {MediaStreamConstraints[]} */
  const attempts = [
    { audio: true, video: { width: { ideal: 640 }, height: { ideal: 480 } } },
    { audio: true },
  ];
  for (const constraints of attempts) {
    try {
      return await devices.getUserMedia(constraints);
    } catch (err) {
      console.info('confab: getUserMedia failed', constraints, err);
    }
  }
  return null;
}

function storedName() {
  try {
    return localStorage.getItem(NAME_KEY) ?? '';
  } catch {
    return '';
  }
}

/** @param {string} name */
function storeName(name) {
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    // Storage can be disabled; the name just will not be remembered.
  }
}

/**
 * A storage area, or null where the browser forbids it (merely touching it can throw).
 * @param {'localStorage' | 'sessionStorage'} which
 * @returns {Storage | null}
 */
function storageOf(which) {
  try {
    return window[which];
  } catch {
    return null;
  }
}

window.addEventListener('pagehide', () => {
  client?.leave();
});
