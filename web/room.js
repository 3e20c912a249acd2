// @ts-check
/**
 * The meeting page (`/r/{room}`): the prejoin view (preview, level meter, device pickers,
 * name), the meeting (tiles, controls, people, chat, devices dialog, reconnect banner) and the
 * ended view. This file only turns events into DOM and clicks into calls: the connection is
 * protocol.js and session.js, local devices media.js, tile drawing tiles.js, geometry
 * layout.js, the chat chat.js and chat-view.js.
 *
 * Access: a `?token=` in the address is read once, kept for this tab (sessionStorage, so a
 * reload still works) and taken out of the address bar, so that copying the address or a
 * screenshot does not hand the invitation on. Its name and role are shown before joining; a
 * viewer's page never opens a camera or microphone. A room password is asked for when the
 * server says the room needs one, and kept in memory only (for reconnects).
 */
import { wireBackground } from './background-ui.js';
import { Chat, loadIdentity } from './chat.js';
import { ChatView } from './chat-view.js';
import { LevelMeter, LocalMedia, placeholderVideo } from './media.js';
import { loadRecent, saveRecent, withRecent } from './recent.js';
import { ConfabError, readTokenClaims } from './protocol.js';
import { wireRtspLinks } from './rtsp-link.js';
import { MeetingSession } from './session.js';
import { TileGrid, hueOf, icon, initials } from './tiles.js';

/** @typedef {import('./protocol.js').ParticipantInfo} ParticipantInfo */
/** @typedef {import('./protocol.js').ConfabClient} ConfabClient */
/** @typedef {import('./protocol.js').Role} Role */

const NAME_KEY = 'confab.name';
/** This tab's join token for a room (sessionStorage), so that a reload keeps it. */
const TOKEN_KEY = 'confab.token.';
/** Operators' notices stay up a little longer than the usual toast. */
const NOTICE_MS = 6_000;
const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;
/** Phones and narrow windows: panels cover the tiles instead of sitting beside them. */
const NARROW = window.matchMedia('(max-width: 760px)');

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
  copyLink: byId('copy-link', HTMLButtonElement),
  toast: byId('toast', HTMLElement),
  prejoin: byId('prejoin', HTMLElement),
  preview: byId('preview', HTMLVideoElement),
  previewAvatar: byId('preview-avatar', HTMLElement),
  previewStatus: byId('preview-status', HTMLElement),
  meter: byId('mic-meter', HTMLElement),
  preMic: byId('pre-mic', HTMLButtonElement),
  preCam: byId('pre-cam', HTMLButtonElement),
  preCameraSelect: byId('pre-camera-select', HTMLSelectElement),
  preMicSelect: byId('pre-mic-select', HTMLSelectElement),
  preSpeakerSelect: byId('pre-speaker-select', HTMLSelectElement),
  preSpeakerRow: byId('pre-speaker-row', HTMLElement),
  joinRoom: byId('join-room', HTMLElement),
  roomCount: byId('room-count', HTMLElement),
  form: byId('join-form', HTMLFormElement),
  name: byId('name', HTMLInputElement),
  nameNote: byId('name-note', HTMLElement),
  passwordRow: byId('password-row', HTMLElement),
  password: byId('password', HTMLInputElement),
  join: byId('join', HTMLButtonElement),
  joinError: byId('join-error', HTMLElement),
  problems: byId('media-problems', HTMLUListElement),
  meeting: byId('meeting', HTMLElement),
  banner: byId('banner', HTMLElement),
  roleNote: byId('role-note', HTMLElement),
  lockState: byId('lock-state', HTMLElement),
  operatorControls: byId('operator-controls', HTMLElement),
  lock: byId('lock', HTMLButtonElement),
  end: byId('end', HTMLButtonElement),
  endDialog: byId('end-dialog', HTMLDialogElement),
  menuLock: byId('menu-lock', HTMLButtonElement),
  menuEnd: byId('menu-end', HTMLButtonElement),
  alone: byId('alone', HTMLElement),
  aloneCopy: byId('alone-copy', HTMLButtonElement),
  grid: byId('grid', HTMLElement),
  mic: byId('mic', HTMLButtonElement),
  cam: byId('cam', HTMLButtonElement),
  share: byId('share', HTMLButtonElement),
  more: byId('more', HTMLButtonElement),
  moreMenu: byId('more-menu', HTMLElement),
  shareFile: byId('share-file', HTMLButtonElement),
  shareFileLabel: byId('share-file-label', HTMLElement),
  shareFileInput: byId('share-file-input', HTMLInputElement),
  openSettings: byId('open-settings', HTMLButtonElement),
  lowData: byId('low-data', HTMLButtonElement),
  audioOnly: byId('audio-only', HTMLButtonElement),
  menuCopyLink: byId('menu-copy-link', HTMLButtonElement),
  peopleToggle: byId('people-toggle', HTMLButtonElement),
  peopleCount: byId('people-count', HTMLElement),
  people: byId('people', HTMLElement),
  peopleClose: byId('people-close', HTMLButtonElement),
  peopleList: byId('people-list', HTMLUListElement),
  chatClose: byId('chat-close', HTMLButtonElement),
  leave: byId('leave', HTMLButtonElement),
  ended: byId('ended', HTMLElement),
  endedTitle: byId('ended-title', HTMLElement),
  endedReason: byId('ended-reason', HTMLElement),
  endedDetail: byId('ended-detail', HTMLElement),
  retry: byId('retry', HTMLButtonElement),
  rejoin: byId('rejoin', HTMLAnchorElement),
  settings: byId('settings', HTMLDialogElement),
  cameraSelect: byId('camera-select', HTMLSelectElement),
  micSelect: byId('mic-select', HTMLSelectElement),
  speakerSelect: byId('speaker-select', HTMLSelectElement),
  speakerRow: byId('speaker-row', HTMLElement),
  settingsStatus: byId('settings-status', HTMLElement),
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
const roomLink = `${location.origin}/r/${encodeURIComponent(room)}`;
document.title = `${room} · confab`;
ui.roomTitle.textContent = room;
ui.joinRoom.textContent = room;

/** The join token: from the address (once), else from an earlier load of this tab. */
const token = takeToken();
const claims = token ? readTokenClaims(token) : null;
ui.name.value = claims?.name ?? new URLSearchParams(location.search).get('name') ?? storedName();
if (token) {
  // The server takes the name from the token; typing another would change nothing.
  ui.name.readOnly = true;
  ui.nameNote.hidden = false;
}
ui.rejoin.href = location.href;
/** A viewer's invitation: nothing is captured, not even for the preview. */
const watchOnly = claims?.role === 'viewer';

const media = new LocalMedia();
const tiles = new TileGrid(ui.grid);
// Each of the others' videos is asked for at the size it is shown (simulcast layers), and not
// at all while the tab is hidden.
tiles.addEventListener('size', (e) => {
  const { participant, source, width } = /** @type {CustomEvent} */ (e).detail;
  client?.setVideoSize(participant, source === 'screen' ? 'screen' : 'camera', document.hidden ? 0 : width);
});
document.addEventListener('visibilitychange', () => {
  for (const { participant, source, width } of tiles.widths()) {
    client?.setVideoSize(participant, source === 'screen' ? 'screen' : 'camera', document.hidden ? 0 : width);
  }
});
const background = wireBackground({
  media,
  toggles: [byId('pre-blur', HTMLButtonElement), byId('blur', HTMLButtonElement), byId('menu-blur', HTMLButtonElement)],
  pickers: [byId('pre-background-select', HTMLSelectElement), byId('background-select', HTMLSelectElement)],
  setTip: (b, text) => setTip(b, text),
  toast: (text) => toast(text, 6_000),
});
wireRtspLinks({ tiles, room, client: () => client, toast: (text) => toast(text) });

/** @type {MeetingSession | null} */
let session = null;
/** @type {ConfabClient | null} the current connection */
let client = null;
/** @type {string | null} our participant id in the current connection */
let selfId = null;
/** @type {Role} what the server lets us do (from `joined`) */
let role = watchOnly ? 'viewer' : 'presenter';
let locked = false;
/** @type {Map<string, ParticipantInfo>} everyone else, by id */
const people = new Map();
/** @type {Map<string, {camera: MediaStream | null, screen: MediaStream | null}>} */
const feeds = new Map();
/** Our own camera as the self tile shows it (the microphone is not played back). */
const selfCamera = new MediaStream();
const selfScreen = new MediaStream();

// ---------------------------------------------------------------------------------------
// Prejoin

if (!ROOM_RE.test(room)) {
  ui.joinError.textContent =
    'Room names are 1–64 letters, digits, dots, dashes or underscores. Pick another on the start page.';
  ui.join.disabled = true;
}

/** The microphone meter of the prejoin view, while it is shown. */
/** @type {LevelMeter | null} */
let meter = null;
let meterFrame = 0;
let meterAriaAt = 0;

const mediaReady = watchOnly
  ? Promise.resolve().then(() => {
    ui.meter.classList.add('off');
    showPreview();
    showDevicePickers();
    showProblems();
  })
  : media.open().then(() => {
    showPreview();
    showDevicePickers();
    showProblems();
    startMeter();
  });
media.addEventListener('change', (e) => {
  const { source } = /** @type {CustomEvent} */ (e).detail;
  if (source === 'microphone') startMeter();
  showPreview();
  showProblems();
  showSelf();
  syncToggles();
});
media.addEventListener('devices', () => showDevicePickers());
media.addEventListener('speaker', (e) => tiles.setSink(/** @type {CustomEvent} */ (e).detail.id));
media.addEventListener('share-ended', () => toast('Sharing stopped.'));

function showPreview() {
  const cam = media.camOn ? media.cameraOut : null;
  if (cam) {
    if (ui.preview.srcObject instanceof MediaStream && ui.preview.srcObject.getVideoTracks()[0] === cam) return;
    ui.preview.srcObject = new MediaStream([cam]);
  } else {
    ui.preview.srcObject = null;
  }
  ui.preview.hidden = !cam;
  ui.previewAvatar.hidden = Boolean(cam);
  const span = ui.previewAvatar.firstElementChild;
  const typed = ui.name.value.trim();
  span?.replaceChildren(typed ? initials(typed) : icon('cam-off'));
  ui.previewAvatar.style.setProperty('--hue', String(hueOf(typed || '?')));
  ui.previewStatus.textContent =
    role === 'viewer' ? 'Watching only' : cam ? '' : media.camOn ? 'No camera' : 'Camera is off';
  ui.previewStatus.hidden = Boolean(cam);
  syncToggles();
}

function showProblems() {
  /** @type {string[]} */
  const lines = [];
  if (media.problems.camera) lines.push(media.problems.camera);
  if (media.problems.microphone && media.problems.microphone !== media.problems.camera) {
    lines.push(media.problems.microphone);
  }
  if (role === 'viewer') {
    lines.push('Your invitation is for watching: you see and hear everyone and can chat; your camera and microphone stay off.');
  } else if (!media.camera && !media.microphone && (media.problems.camera || media.problems.microphone)) {
    lines.push('You will join as a viewer: you see and hear everyone, and they see your name.');
  }
  ui.problems.replaceChildren(
    ...lines.map((line) => {
      const li = document.createElement('li');
      li.textContent = line;
      return li;
    }),
  );
}

function startMeter() {
  meter?.close();
  meter = media.microphone ? new LevelMeter(media.microphone) : null;
  cancelAnimationFrame(meterFrame);
  const bar = /** @type {HTMLElement} */ (ui.meter.firstElementChild);
  ui.meter.classList.toggle('off', !media.microphone);
  const tick = () => {
    if (ui.prejoin.hidden || !meter) return;
    const level = media.micOn ? meter.level() : 0;
    bar.style.transform = `scaleX(${level.toFixed(3)})`;
    const now = performance.now();
    if (now - meterAriaAt > 500) {
      meterAriaAt = now;
      ui.meter.setAttribute('aria-valuenow', String(Math.round(level * 100)));
    }
    meterFrame = requestAnimationFrame(tick);
  };
  tick();
}

/**
 * Fills a device picker.
 * @param {HTMLSelectElement} select
 * @param {{id: string, label: string}[]} devices
 * @param {string} current
 * @param {string} none  shown when there are none
 */
function fillSelect(select, devices, current, none) {
  const options = devices.map((d) => new Option(d.label, d.id, false, d.id === current));
  if (options.length === 0) options.push(new Option(none, '', true, true));
  select.replaceChildren(...options);
  select.disabled = devices.length === 0;
  if (current && devices.some((d) => d.id === current)) select.value = current;
}

function showDevicePickers() {
  for (const [cam, mic, speaker, speakerRow] of /** @type {const} */ ([
    [ui.preCameraSelect, ui.preMicSelect, ui.preSpeakerSelect, ui.preSpeakerRow],
    [ui.cameraSelect, ui.micSelect, ui.speakerSelect, ui.speakerRow],
  ])) {
    const none = role === 'viewer' ? 'Not used when watching' : null;
    fillSelect(cam, media.devicesOf('videoinput'), media.currentDevice('camera'), none ?? 'No camera found');
    fillSelect(mic, media.devicesOf('audioinput'), media.currentDevice('microphone'), none ?? 'No microphone found');
    const outputs = media.devicesOf('audiooutput');
    speakerRow.hidden = !media.canPickSpeaker || outputs.length === 0;
    fillSelect(speaker, outputs, media.speakerId || outputs[0]?.id || '', 'Default speaker');
  }
}

for (const select of [ui.preCameraSelect, ui.cameraSelect]) {
  select.addEventListener('change', () => {
    media.useCamera(select.value).then(() => ui.settingsStatus.textContent = media.problems.camera ?? '');
  });
}
for (const select of [ui.preMicSelect, ui.micSelect]) {
  select.addEventListener('change', () => {
    media.useMicrophone(select.value).then(() => ui.settingsStatus.textContent = media.problems.microphone ?? '');
  });
}
for (const select of [ui.preSpeakerSelect, ui.speakerSelect]) {
  select.addEventListener('change', () => media.useSpeaker(select.value));
}

ui.preMic.addEventListener('click', () => toggleMicrophone());
ui.preCam.addEventListener('click', () => toggleCamera());
ui.name.addEventListener('input', () => showPreview());

/** Shows who is in the room before joining (the public room API). */
async function showRoomCount() {
  try {
    // The list first: asking for an empty room's details would be a 404.
    // Protected rooms are listed to the server's operator only: with a token, a room missing
    // from the list may just be one of those.
    const rooms = await (await fetch('/api/rooms')).json();
    if (!Array.isArray(rooms) || !rooms.some((r) => r?.name === room)) {
      ui.roomCount.textContent = token ? '' : 'nobody is here yet';
      return;
    }
    const query = token ? `?token=${encodeURIComponent(token)}` : '';
    const r = await fetch(`/api/rooms/${encodeURIComponent(room)}${query}`);
    const body = r.ok ? await r.json() : { participants: [] };
    /** @type {string[]} */
    const names = (body.participants ?? []).map((/** @type {any} */ p) => String(p.name));
    ui.roomCount.textContent =
      names.length === 0
        ? 'nobody is here yet'
        : names.length <= 3
          ? `${listNames(names)} ${names.length === 1 ? 'is' : 'are'} here`
          : `${listNames(names.slice(0, 2))} and ${names.length - 2} others are here`;
  } catch {
    ui.roomCount.textContent = '';
  }
}
if (ROOM_RE.test(room)) showRoomCount();

/** @param {string[]} names */
function listNames(names) {
  return names.length <= 1 ? names.join('') : `${names.slice(0, -1).join(', ')} and ${names.at(-1)}`;
}

// ---------------------------------------------------------------------------------------
// Joining and the session

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
  if (!name) {
    ui.joinError.textContent = 'Type your name first: the others see it on your tile.';
    ui.name.focus();
    return;
  }
  const password = ui.passwordRow.hidden ? '' : ui.password.value;
  if (!ui.passwordRow.hidden && !password) {
    ui.joinError.textContent = 'Type the room password first.';
    ui.password.focus();
    return;
  }
  if (!token) storeName(name);
  ui.join.disabled = true;
  ui.join.textContent = 'Joining…';
  ui.joinError.textContent = '';
  ui.password.removeAttribute('aria-invalid');
  await mediaReady;
  const s = new MeetingSession({
    room,
    name,
    media,
    identity: loadIdentity(storageOf('localStorage')),
    placeholder: placeholderVideo,
    password: password || undefined,
    token: token ?? undefined,
  });
  session = s;
  s.addEventListener('client', (e) => listen(/** @type {CustomEvent} */ (e).detail.client));
  s.addEventListener('joined', (e) => onJoined(/** @type {CustomEvent} */ (e).detail));
  s.addEventListener('reconnecting', (e) => onReconnecting(/** @type {CustomEvent} */ (e).detail));
  s.addEventListener('failed', (e) => onFailed(/** @type {CustomEvent} */ (e).detail.reason, /** @type {CustomEvent} */ (e).detail.media));
  s.addEventListener('ended', (e) => {
    const { reason, removed } = /** @type {CustomEvent} */ (e).detail;
    endMeeting(reason, removed);
  });
  s.addEventListener('muted', (e) => onMuted(/** @type {CustomEvent} */ (e).detail));
  s.addEventListener('quality', (e) => tiles.setQuality(/** @type {CustomEvent} */ (e).detail.quality));
  try {
    await s.start();
    const storage = storageOf('localStorage');
    saveRecent(storage, withRecent(loadRecent(storage), room, Date.now()));
  } catch (err) {
    session = null;
    client = null;
    ui.joinError.textContent = err instanceof Error ? err.message : String(err);
    ui.join.disabled = false;
    ui.join.textContent = 'Join';
    const code = err instanceof ConfabError ? err.code : null;
    // A token-only room (`token_required`) has no password to ask for.
    if ((code === 'auth_required' || code === 'bad_credentials') && !token) askPassword(code);
    // A refused token will not work after a reload either.
    if (code === 'bad_credentials' && token) forgetToken();
  }
}

/**
 * The room needs a password (or the one given was wrong): show the box, with the server's
 * message (already in the error line) as its description.
 * @param {'auth_required' | 'bad_credentials'} code
 */
function askPassword(code) {
  const first = ui.passwordRow.hidden;
  ui.passwordRow.hidden = false;
  if (code === 'bad_credentials') ui.password.setAttribute('aria-invalid', 'true');
  ui.password.focus();
  if (!first) ui.password.select();
}

/**
 * Wires a new connection to the page: people, feeds and chat.
 * @param {ConfabClient} c
 */
function listen(c) {
  client = c;
  // A debug handle for people and browser tests (peer connections, id, streams).
  /** @type {any} */ (window).confab = c;
  /** @param {Event} e */
  const detail = (e) => /** @type {CustomEvent} */ (e).detail;
  const current = () => client === c;
  // Before the chat's own listener: messages restored at join are drawn as ours.
  c.addEventListener('joined', (e) => {
    chatView.setSelf(detail(e).id, c.name);
    chatView.setParticipants(detail(e).participants);
    // In a protected room, shared files open with this connection's token.
    chatView.setFileToken(c.uploadToken);
  });
  chat.attach(c);
  c.setDataMode(dataMode);
  // A new connection starts with every video at full size: tell it how large each is shown.
  for (const { participant, source, width } of tiles.widths()) {
    c.setVideoSize(participant, source === 'screen' ? 'screen' : 'camera', width);
  }
  // Someone new and someone changed are drawn alike: the tile and the list show what is known now.
  /** @param {Event} e */
  const participantSeen = (e) => {
    if (!current()) return;
    const p = detail(e).participant;
    people.set(p.id, p);
    showParticipant(p.id);
    chatView.participantSeen(p);
    showPeople();
  };
  c.addEventListener('participant-joined', participantSeen);
  c.addEventListener('participant-updated', participantSeen);
  c.addEventListener('participant-left', (e) => {
    if (!current()) return;
    const id = detail(e).id;
    people.delete(id);
    feeds.delete(id);
    tiles.removeParticipant(id);
    chatView.participantLeft(id);
    showPeople();
  });
  c.addEventListener('feeds', (e) => {
    if (!current()) return;
    const { participant, camera, screen } = detail(e);
    feeds.set(participant, { camera, screen });
    showParticipant(participant);
  });
  c.addEventListener('active-speaker', (e) => {
    if (!current()) return;
    tiles.setSpeaker(detail(e).id);
  });
  c.addEventListener('room-state', (e) => {
    if (!current()) return;
    const { locked: now, by } = detail(e);
    showLock(now);
    toast(now ? `Room locked by ${by}` : `Room unlocked by ${by}`, NOTICE_MS);
  });
  c.addEventListener('server-error', (e) => {
    const { code, message } = detail(e);
    console.warn('confab:', code, message);
    if (code === 'publish') toast(`Could not send your media: ${message}`);
    else if (code === 'forbidden' || code === 'unknown_participant') toast(message, NOTICE_MS);
  });
}

/**
 * An operator turned our microphone or camera off (session.js did it already, as the toggle
 * would); say who. Turning it on again is the user's choice.
 * @param {{kind: 'audio' | 'video', by: string}} d
 */
function onMuted({ kind, by }) {
  syncToggles();
  showPreview();
  toast(kind === 'audio' ? `${by} muted your microphone` : `${by} turned off your camera`, NOTICE_MS);
}

/** @param {boolean} now */
function showLock(now) {
  locked = now;
  for (const b of [ui.lock, ui.menuLock]) b.setAttribute('aria-pressed', String(now));
  ui.lockState.hidden = !now;
  ui.lockState.title = 'Nobody new can join until an operator unlocks the room';
  setTip(ui.lock, now ? 'Unlock the room' : 'Lock the room: nobody new can join');
}

/** Shows the controls our role has, hides the others. */
function showRole() {
  for (const el of [ui.operatorControls, ui.menuLock, ui.menuEnd]) el.hidden = role !== 'operator';
  ui.roleNote.hidden = role !== 'viewer';
  syncToggles();
  showPreview();
  showProblems();
  showDevicePickers();
}

/**
 * In the room (first time or again after a reconnect).
 * @param {{id: string, participants: ParticipantInfo[], reconnected: boolean, role: Role,
 *   locked: boolean}} joined
 */
function onJoined({ id, participants, reconnected, role: given, locked: isLocked }) {
  role = given;
  showRole();
  showLock(isLocked);
  if (!reconnected) enterMeeting();
  // A new connection knows the room afresh: forget who was there before the drop.
  if (selfId !== null && selfId !== id) {
    tiles.remove(`${selfId}:camera`);
    tiles.remove(`${selfId}:screen`);
  }
  selfId = id;
  const present = new Set(participants.map((p) => p.id));
  for (const old of people.keys()) if (!present.has(old)) tiles.removeParticipant(old);
  people.clear();
  feeds.clear();
  for (const p of participants) people.set(p.id, p);
  for (const p of participants) showParticipant(p.id);
  showSelf();
  showPeople();
  syncToggles();
  ui.banner.hidden = true;
  ui.meeting.classList.remove('reconnecting');
  if (reconnected) {
    ui.prejoin.hidden = true;
    ui.ended.hidden = true;
    ui.meeting.hidden = false;
    toast('Reconnected.');
  }
}

function enterMeeting() {
  cancelAnimationFrame(meterFrame);
  meter?.close();
  meter = null;
  ui.prejoin.hidden = true;
  ui.meeting.hidden = false;
  ui.preview.srcObject = null;
  document.body.classList.add('in-meeting');
  // On a phone the conversation covers the tiles: start with it closed.
  if (NARROW.matches) chatView.setOpen(false);
  tiles.layout();
}

/** @param {{attempt: number, delayMs: number, reason: string, offline: boolean}} d */
function onReconnecting(d) {
  ui.banner.hidden = false;
  ui.banner.textContent = d.offline
    ? 'You are offline. Reconnecting when the network is back…'
    : 'Reconnecting…';
  ui.banner.title = d.reason;
  ui.meeting.classList.add('reconnecting');
  ui.ended.hidden = true;
  ui.meeting.hidden = false;
}

/**
 * @param {string} reason
 * @param {boolean} [media]  the server was reachable, but audio and video never got through
 */
function onFailed(reason, media = false) {
  ui.meeting.hidden = true;
  ui.ended.hidden = false;
  ui.endedTitle.textContent = media ? 'Your network seems to block the media connection' : 'Cannot reach the server';
  ui.endedReason.textContent = media
    ? reason
    : 'The connection to the meeting was lost and could not be restored. The server may be down ' +
      'or restarting, or your network may be offline.';
  ui.endedDetail.textContent = `Last error: ${reason}`;
  ui.endedDetail.hidden = media;
  ui.retry.hidden = false;
  ui.rejoin.hidden = true;
  ui.retry.focus();
}

ui.retry.addEventListener('click', () => {
  ui.retry.hidden = true;
  ui.rejoin.hidden = false;
  session?.retry();
});

/**
 * @param {string} reason
 * @param {boolean} [removed]  an operator removed us or ended the meeting
 */
function endMeeting(reason, removed = false) {
  // The first reason wins: after a click on Leave, the server's `bye` changes nothing.
  if (!ui.ended.hidden && ui.retry.hidden) return;
  client = null;
  session = null;
  tiles.clear();
  people.clear();
  feeds.clear();
  ui.prejoin.hidden = true;
  ui.meeting.hidden = true;
  ui.ended.hidden = false;
  ui.retry.hidden = true;
  ui.rejoin.hidden = false;
  ui.endedDetail.hidden = true;
  document.body.classList.remove('in-meeting');
  ui.endDialog.close();
  ui.endedTitle.textContent = reason === 'left' ? 'You left' : 'Meeting ended';
  ui.endedReason.textContent =
    reason === 'left'
      ? 'You left the meeting.'
      : removed
        ? `${reason.charAt(0).toUpperCase()}${reason.slice(1)}.`
        : `The meeting ended: ${reason}.`;
  // Coming back is not offered to someone an operator sent away.
  ui.rejoin.hidden = removed;
  if (removed) ui.endedReason.focus();
  else ui.rejoin.focus();
}

// ---------------------------------------------------------------------------------------
// Tiles

/** @param {string} id */
function showParticipant(id) {
  const p = people.get(id);
  if (!p) return;
  const feed = feeds.get(id);
  const label = p.kind === 'camera' ? `${p.name} (camera)` : p.name;
  tiles.upsert(`${id}:camera`, {
    participant: id,
    source: 'camera',
    name: p.name,
    label,
    kind: p.kind,
    self: false,
    audio: p.audio,
    video: p.video,
    state: p.state,
    stream: feed?.camera ?? null,
  });
  if (feed?.screen) {
    tiles.upsert(`${id}:screen`, {
      participant: id,
      source: 'screen',
      name: p.name,
      label: `${p.name} (screen)`,
      kind: p.kind,
      self: false,
      audio: true,
      video: true,
      stream: feed.screen,
    });
  } else {
    tiles.remove(`${id}:screen`);
  }
}

/** Our own tiles: the camera (mirrored, never played back) and our share, if any. */
function showSelf() {
  if (selfId === null || !client) return;
  const cam = media.camOn ? media.cameraOut : null;
  for (const t of selfCamera.getTracks()) if (t !== cam) selfCamera.removeTrack(t);
  if (cam && !selfCamera.getTracks().includes(cam)) selfCamera.addTrack(cam);
  tiles.upsert(`${selfId}:camera`, {
    participant: selfId,
    source: 'camera',
    name: client.name,
    label: `${client.name} (you)`,
    kind: 'browser',
    self: true,
    audio: Boolean(media.microphone) && media.micOn,
    video: Boolean(cam),
    stream: selfCamera,
  });
  if (media.screen) {
    for (const t of selfScreen.getTracks()) if (t !== media.screen) selfScreen.removeTrack(t);
    if (!selfScreen.getTracks().includes(media.screen)) selfScreen.addTrack(media.screen);
    tiles.upsert(`${selfId}:screen`, {
      participant: selfId,
      source: 'screen',
      name: client.name,
      label: media.sharing === 'file' ? `${client.name} (you, video file)` : `${client.name} (you, screen)`,
      kind: 'browser',
      self: true,
      audio: true,
      video: true,
      stream: selfScreen,
    });
  } else {
    tiles.remove(`${selfId}:screen`);
  }
  showPeople();
}

// ---------------------------------------------------------------------------------------
// Controls

/** Brings the toggles (prejoin and meeting) in line with the media. */
function syncToggles() {
  const micOn = Boolean(media.microphone) && media.micOn;
  const camOn = Boolean(media.camera) && media.camOn;
  for (const b of [ui.mic, ui.preMic]) b.setAttribute('aria-pressed', String(micOn));
  for (const b of [ui.cam, ui.preCam]) b.setAttribute('aria-pressed', String(camOn));
  setTip(ui.mic, micOn ? 'Mute microphone' : media.microphone ? 'Unmute microphone' : 'Turn on a microphone', 'M');
  setTip(ui.cam, camOn ? 'Turn camera off' : 'Turn camera on', 'V');
  const sharing = media.sharing !== null;
  ui.share.setAttribute('aria-pressed', String(media.sharing === 'screen'));
  setTip(
    ui.share,
    !media.canShareScreen ? 'This browser cannot share a screen' : sharing ? 'Stop sharing' : 'Share screen',
    'S',
  );
  ui.share.setAttribute('aria-disabled', String(!media.canShareScreen));
  ui.shareFileLabel.textContent = media.sharing === 'file' ? 'Stop the video file' : 'Play a video file';
  const watching = role === 'viewer';
  for (const b of [ui.mic, ui.cam, ui.share, ui.preMic, ui.preCam, ui.shareFile]) b.disabled = watching;
  background.setWatching(watching);
  if (watching) {
    const why = 'Not available when watching';
    setTip(ui.mic, `Microphone: ${why.toLowerCase()}`);
    setTip(ui.cam, `Camera: ${why.toLowerCase()}`);
    setTip(ui.share, `Share screen: ${why.toLowerCase()}`);
    setTip(ui.preMic, why);
    setTip(ui.preCam, why);
  }
  if (selfId !== null) showSelf();
}

/**
 * Sets a control's tooltip text, with its keyboard shortcut if it has one.
 * @param {HTMLButtonElement} button
 * @param {string} text
 * @param {string} [key]
 */
function setTip(button, text, key) {
  const tip = document.getElementById(button.getAttribute('aria-describedby') ?? '');
  if (!tip) return;
  if (!key) {
    tip.textContent = text;
    return;
  }
  const kbd = document.createElement('kbd');
  kbd.textContent = key;
  tip.replaceChildren(`${text} `, kbd);
}

async function toggleMicrophone() {
  if (role === 'viewer') return;
  if (!media.microphone) {
    await media.useMicrophone(media.microphoneId);
    if (!media.microphone) {
      toast(media.problems.microphone ?? 'No microphone found.');
      return;
    }
    media.setMicOn(true);
  } else if (session) {
    session.setMicrophone(!media.micOn);
  } else {
    media.setMicOn(!media.micOn);
  }
  syncToggles();
}

async function toggleCamera() {
  if (role === 'viewer') return;
  const on = !(media.camOn && media.camera);
  const ok = session ? await session.setCamera(on) : await media.setCamOn(on);
  if (on && !ok) toast(media.problems.camera ?? 'No camera found.');
  showPreview();
  syncToggles();
}

async function toggleShare() {
  if (role === 'viewer') return;
  if (!media.canShareScreen) {
    toast('This browser cannot share a screen. You can still play a video file (More).');
    return;
  }
  if (media.sharing === 'screen') {
    media.stopShare();
  } else {
    try {
      await media.shareScreen();
    } catch (err) {
      const name = /** @type {any} */ (err)?.name;
      toast(name === 'NotAllowedError' ? 'Screen sharing was cancelled.' : `Cannot share the screen: ${err}`);
    }
  }
  syncToggles();
}

ui.mic.addEventListener('click', () => toggleMicrophone());
ui.cam.addEventListener('click', () => toggleCamera());
ui.share.addEventListener('click', () => toggleShare());
ui.leave.addEventListener('click', () => {
  if (session) session.leave();
  else endMeeting('left');
});

// Operators: lock the room, end the meeting (after confirming).
function toggleLock() {
  // The buttons follow the server's `room_state`, not the click.
  if (!client?.lock(!locked)) toast('Not connected; try again in a moment.');
}
function confirmEnd() {
  ui.endDialog.returnValue = '';
  ui.endDialog.showModal();
}
ui.lock.addEventListener('click', toggleLock);
ui.end.addEventListener('click', confirmEnd);
ui.menuLock.addEventListener('click', () => {
  setMenu(false);
  toggleLock();
});
ui.menuEnd.addEventListener('click', () => {
  setMenu(false);
  confirmEnd();
});
ui.endDialog.addEventListener('close', () => {
  if (ui.endDialog.returnValue !== 'end') {
    if (!ui.meeting.hidden) (NARROW.matches ? ui.more : ui.end).focus();
    return;
  }
  if (!client?.end()) toast('Not connected; try again in a moment.');
});

// More menu: a disclosure with a few less frequent actions.
/** @param {boolean} open */
function setMenu(open) {
  ui.moreMenu.hidden = !open;
  ui.more.setAttribute('aria-expanded', String(open));
  if (open) /** @type {HTMLElement | null} */ (ui.moreMenu.querySelector('button'))?.focus();
}
ui.more.addEventListener('click', () => setMenu(ui.moreMenu.hidden));
ui.moreMenu.addEventListener('keydown', (e) => {
  // Items a narrow or wide window does not show are skipped.
  const items = /** @type {HTMLButtonElement[]} */ ([...ui.moreMenu.querySelectorAll('button')]).filter((b) =>
    b.checkVisibility(),
  );
  const at = items.indexOf(/** @type {HTMLButtonElement} */ (document.activeElement));
  if (e.key === 'Escape') {
    setMenu(false);
    ui.more.focus();
  } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
    e.preventDefault();
    items[(at + (e.key === 'ArrowDown' ? 1 : items.length - 1)) % items.length]?.focus();
  }
});
document.addEventListener('click', (e) => {
  if (!ui.moreMenu.hidden && e.target instanceof Node && !ui.more.parentElement?.contains(e.target)) setMenu(false);
});
ui.shareFile.addEventListener('click', () => {
  setMenu(false);
  if (media.sharing === 'file') {
    media.stopShare();
    syncToggles();
  } else {
    ui.shareFileInput.click();
  }
});
ui.shareFileInput.addEventListener('change', async () => {
  const file = ui.shareFileInput.files?.[0];
  ui.shareFileInput.value = '';
  if (!file) return;
  try {
    await media.shareFile(file);
    toast(`Playing ${file.name} for everyone.`);
  } catch (err) {
    toast(err instanceof Error ? err.message : String(err));
  }
  syncToggles();
});
// Data saver: the smallest layer of every video, or no video; remembered on this device.
/** @type {import('./protocol.js').DataMode} */
let dataMode = loadDataMode();
function loadDataMode() {
  try {
    const saved = localStorage.getItem('confab.dataMode');
    return saved === 'low' || saved === 'audio' ? saved : 'normal';
  } catch {
    return 'normal';
  }
}
/** @param {import('./protocol.js').DataMode} mode */
function setDataMode(mode) {
  dataMode = mode;
  try {
    localStorage.setItem('confab.dataMode', mode);
  } catch {
    // Storage off: the choice lasts for this page.
  }
  ui.lowData.setAttribute('aria-pressed', String(mode === 'low'));
  ui.audioOnly.setAttribute('aria-pressed', String(mode === 'audio'));
  client?.setDataMode(mode);
}
setDataMode(dataMode);
ui.lowData.addEventListener('click', () => {
  setMenu(false);
  setDataMode(dataMode === 'low' ? 'normal' : 'low');
  toast(dataMode === 'low' ? "Low data: others' video comes in its smallest size." : 'Low data off.');
});
ui.audioOnly.addEventListener('click', () => {
  setMenu(false);
  setDataMode(dataMode === 'audio' ? 'normal' : 'audio');
  toast(dataMode === 'audio' ? "Audio only: others' video is not sent to you." : 'Video is back.');
});

ui.openSettings.addEventListener('click', () => {
  setMenu(false);
  showDevicePickers();
  ui.settingsStatus.textContent = '';
  ui.settings.showModal();
});
ui.menuCopyLink.addEventListener('click', () => {
  setMenu(false);
  copyLink();
});
ui.copyLink.addEventListener('click', () => copyLink());
ui.aloneCopy.addEventListener('click', () => copyLink());

async function copyLink() {
  try {
    await navigator.clipboard.writeText(roomLink);
    toast('Link copied. Send it to whoever should join.');
  } catch {
    toast(`Share this link: ${roomLink}`, 8_000);
  }
}

// Side panels: the people list and the conversation, one at a time.
/** @param {boolean} open */
function setPeopleOpen(open) {
  ui.people.hidden = !open;
  ui.peopleToggle.setAttribute('aria-expanded', String(open));
  if (open && !ui.chat.panel.hidden) chatView.setOpen(false);
}
ui.peopleToggle.addEventListener('click', () => setPeopleOpen(ui.people.hidden));
ui.peopleClose.addEventListener('click', () => {
  setPeopleOpen(false);
  ui.peopleToggle.focus();
});
// ChatView toggles its panel on the same click; this runs after it.
ui.chat.toggle.addEventListener('click', () => {
  if (!ui.chat.panel.hidden) setPeopleOpen(false);
});
ui.chatClose.addEventListener('click', () => {
  chatView.setOpen(false);
  ui.chat.toggle.focus();
});
for (const panel of [ui.people, ui.chat.panel]) {
  panel.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || !NARROW.matches) return;
    if (panel === ui.people) setPeopleOpen(false);
    else chatView.setOpen(false);
  });
}

/** What the people list says about a role (presenters are the usual case: nothing). */
const ROLE_NOTES = { presenter: '', viewer: 'watching', operator: 'host' };

function showPeople() {
  /** @type {Array<{id: string, name: string, note: string, audio: boolean, video: boolean, self: boolean}>} */
  const list = [];
  if (selfId !== null && client) {
    list.push({
      id: selfId,
      name: client.name,
      note: ['you', ROLE_NOTES[role]].filter(Boolean).join(', '),
      audio: Boolean(media.microphone) && media.micOn,
      video: Boolean(media.camera) && media.camOn,
      self: true,
    });
  }
  for (const p of people.values()) {
    const note = p.kind === 'camera' ? 'camera' : ROLE_NOTES[p.role ?? 'presenter'] ?? '';
    list.push({ id: p.id, name: p.name, note, audio: p.audio, video: p.video, self: false });
  }
  ui.peopleCount.textContent = String(list.length);
  ui.alone.hidden = people.size > 0 || selfId === null;
  // The list is drawn afresh: keep the keyboard focus on the same action.
  const focused = document.activeElement instanceof HTMLElement && ui.peopleList.contains(document.activeElement)
    ? document.activeElement.dataset.action ?? null
    : null;
  ui.peopleList.replaceChildren(
    ...list.map((p) => {
      const li = document.createElement('li');
      const avatar = document.createElement('span');
      avatar.className = 'avatar small';
      avatar.setAttribute('aria-hidden', 'true');
      avatar.style.setProperty('--hue', String(hueOf(p.name)));
      avatar.textContent = initials(p.name);
      const name = document.createElement('span');
      name.className = 'person-name';
      name.textContent = p.name;
      if (p.note) {
        const note = document.createElement('span');
        note.className = 'person-note';
        note.textContent = ` (${p.note})`;
        name.append(note);
      }
      const state = document.createElement('span');
      state.className = 'person-state';
      state.append(
        icon(p.audio ? 'mic' : 'mic-off', p.audio ? 'Microphone on' : 'Microphone off'),
        icon(p.video ? 'cam' : 'cam-off', p.video ? 'Camera on' : 'Camera off'),
      );
      li.append(avatar, name, state);
      if (role === 'operator' && !p.self) li.append(operatorActions(p));
      return li;
    }),
  );
  if (focused) {
    const again = [...ui.peopleList.querySelectorAll('button')].find((b) => b.dataset.action === focused);
    const fallback = ui.peopleList.querySelector('button:not(:disabled)');
    (again && !again.disabled ? again : fallback instanceof HTMLElement ? fallback : null)?.focus();
  }
}

/**
 * An operator's buttons for one participant: mute, stop video, remove.
 * @param {{id: string, name: string, audio: boolean, video: boolean}} p
 */
function operatorActions(p) {
  const box = document.createElement('span');
  box.className = 'person-actions';
  /**
   * @param {string} action
   * @param {string} iconName
   * @param {string} label
   * @param {boolean} disabled
   * @param {string} title
   * @param {() => boolean | undefined} run
   */
  const button = (action, iconName, label, disabled, title, run) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'icon-button quiet';
    b.dataset.action = `${action}:${p.id}`;
    b.setAttribute('aria-label', label);
    b.title = title;
    b.disabled = disabled;
    b.append(icon(iconName));
    b.addEventListener('click', () => {
      if (!run()) toast('Not connected; try again in a moment.');
    });
    return b;
  };
  box.append(
    button('mute', 'mic-off', `Mute ${p.name}`, !p.audio, p.audio ? 'Mute their microphone' : 'Their microphone is off',
      () => client?.mute(p.id, 'audio')),
    button('video', 'cam-off', `Stop video of ${p.name}`, !p.video, p.video ? 'Turn their camera off' : 'Their camera is off',
      () => client?.mute(p.id, 'video')),
    button('remove', 'person-remove', `Remove ${p.name}`, false, 'Take them out of the room', () => client?.remove(p.id)),
  );
  return box;
}

// Keyboard shortcuts: M, V, S while not typing.
document.addEventListener('keydown', (e) => {
  if (ui.meeting.hidden || e.ctrlKey || e.metaKey || e.altKey || e.repeat || ui.settings.open || ui.endDialog.open) return;
  const t = e.target;
  if (
    t instanceof HTMLInputElement ||
    t instanceof HTMLTextAreaElement ||
    t instanceof HTMLSelectElement ||
    (t instanceof HTMLElement && t.isContentEditable)
  ) {
    return;
  }
  const key = e.key.toLowerCase();
  if (key === 'm') ui.mic.click();
  else if (key === 'v') ui.cam.click();
  else if (key === 's') ui.share.click();
  else return;
  e.preventDefault();
});

/** @type {ReturnType<typeof setTimeout> | undefined} */
let toastTimer;
/**
 * A short note at the top of the page (also read by screen readers).
 * @param {string} text
 * @param {number} [ms]
 */
function toast(text, ms = 3_500) {
  ui.toast.textContent = text;
  ui.toast.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    ui.toast.classList.remove('show');
    ui.toast.textContent = '';
  }, ms);
}

// ---------------------------------------------------------------------------------------
// Storage

/**
 * The join token of this page: taken from `?token=` (and then out of the address bar, other
 * parameters kept), else what an earlier load of this tab took. Null without one.
 * @returns {string | null}
 */
function takeToken() {
  const key = TOKEN_KEY + room;
  const params = new URLSearchParams(location.search);
  const given = params.get('token');
  if (given === null) {
    try {
      return storageOf('sessionStorage')?.getItem(key) || null;
    } catch {
      return null;
    }
  }
  params.delete('token');
  const rest = params.toString();
  history.replaceState(history.state, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);
  try {
    storageOf('sessionStorage')?.setItem(key, given);
  } catch {
    // Without storage a reload needs the link again; this visit works all the same.
  }
  return given || null;
}

function forgetToken() {
  try {
    storageOf('sessionStorage')?.removeItem(TOKEN_KEY + room);
  } catch {
    // Nothing stored, then.
  }
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
