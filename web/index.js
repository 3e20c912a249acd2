// @ts-check
/** The landing page: suggests a random room name and goes to `/r/{room}`. */

const ADJECTIVES = ['amber', 'brisk', 'calm', 'dusky', 'eager', 'fuzzy', 'gentle', 'hazel',
  'ivory', 'jolly', 'keen', 'lucky', 'mellow', 'nimble', 'olive', 'plucky', 'quiet', 'rosy',
  'sunny', 'tidy', 'upbeat', 'vivid', 'witty', 'zesty'];
const ANIMALS = ['otter', 'heron', 'lynx', 'panda', 'koala', 'finch', 'gecko', 'bison',
  'raven', 'llama', 'moose', 'newt', 'orca', 'puffin', 'quokka', 'robin', 'seal', 'tapir',
  'walrus', 'yak', 'zebra'];

/** @param {readonly string[]} list */
const pick = (list) => list[Math.floor(Math.random() * list.length)];

/** A readable room name in the room alphabet, e.g. `calm-otter-42`. */
export function suggestRoomName() {
  return `${pick(ADJECTIVES)}-${pick(ANIMALS)}-${Math.floor(Math.random() * 100)}`;
}

const form = /** @type {HTMLFormElement} */ (document.getElementById('go-form'));
const input = /** @type {HTMLInputElement} */ (document.getElementById('room'));
input.value = suggestRoomName();
input.select();
form.addEventListener('submit', (event) => {
  event.preventDefault();
  const room = input.value.trim();
  if (!form.reportValidity() || !room) return;
  location.assign(`/r/${encodeURIComponent(room)}`);
});
