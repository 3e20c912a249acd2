// @ts-check
/**
 * The landing page: suggests a random room name, lists the rooms this browser visited
 * (recent.js) and goes to `/r/{room}`.
 */
import { loadRecent, saveRecent, timeAgo, withoutRecent } from './recent.js';

const ADJECTIVES = ['amber', 'brisk', 'calm', 'dusky', 'eager', 'fuzzy', 'gentle', 'hazel',
  'ivory', 'jolly', 'keen', 'lucky', 'mellow', 'nimble', 'olive', 'plucky', 'quiet', 'rosy',
  'sunny', 'tidy', 'upbeat', 'vivid', 'witty', 'zesty'];
const ANIMALS = ['otter', 'heron', 'lynx', 'panda', 'koala', 'finch', 'gecko', 'bison',
  'raven', 'llama', 'moose', 'newt', 'orca', 'puffin', 'quokka', 'robin', 'seal', 'tapir',
  'walrus', 'yak', 'zebra'];
const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** @param {readonly string[]} list */
const pick = (list) => list[Math.floor(Math.random() * list.length)];

/** A readable room name in the room alphabet, e.g. `calm-otter-42`. */
export function suggestRoomName() {
  return `${pick(ADJECTIVES)}-${pick(ANIMALS)}-${Math.floor(Math.random() * 100)}`;
}

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
function byId(id, type) {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`index.html lacks #${id}`);
  return el;
}

const form = byId('go-form', HTMLFormElement);
const input = byId('room', HTMLInputElement);
const hint = byId('room-hint', HTMLElement);
const hintText = hint.textContent ?? '';
const recentSection = byId('recent', HTMLElement);
const recentList = byId('recent-list', HTMLUListElement);

/** @returns {Storage | null} */
function storage() {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

input.value = suggestRoomName();
input.select();
byId('suggest', HTMLButtonElement).addEventListener('click', () => {
  input.value = suggestRoomName();
  showValidity();
  input.focus();
  input.select();
});
input.addEventListener('input', showValidity);

function showValidity() {
  const room = input.value.trim();
  const ok = room === '' || ROOM_RE.test(room);
  input.setAttribute('aria-invalid', String(!ok));
  hint.classList.toggle('error', !ok);
  hint.textContent = ok ? hintText : 'Use only letters, digits, dots, dashes or underscores (no spaces), up to 64.';
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const room = input.value.trim();
  if (!ROOM_RE.test(room)) {
    showValidity();
    if (!room) hint.textContent = 'Type a room name first.';
    hint.classList.add('error');
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  location.assign(`/r/${encodeURIComponent(room)}`);
});

function renderRecent() {
  const list = loadRecent(storage());
  recentSection.hidden = list.length === 0;
  const now = Date.now();
  recentList.replaceChildren(
    ...list.map((r) => {
      const li = document.createElement('li');
      const link = document.createElement('a');
      link.href = `/r/${encodeURIComponent(r.name)}`;
      link.textContent = r.name;
      const when = document.createElement('time');
      when.dateTime = new Date(r.at).toISOString();
      when.textContent = timeAgo(r.at, now);
      const forget = document.createElement('button');
      forget.type = 'button';
      forget.className = 'icon-button quiet small';
      forget.setAttribute('aria-label', `Forget ${r.name}`);
      forget.title = 'Forget this room';
      forget.innerHTML =
        '<svg class="icon" aria-hidden="true" focusable="false"><use href="/static/icons.svg#close"/></svg>';
      forget.addEventListener('click', () => {
        saveRecent(storage(), withoutRecent(loadRecent(storage()), r.name));
        renderRecent();
        input.focus();
      });
      li.append(link, when, forget);
      return li;
    }),
  );
}
renderRecent();
