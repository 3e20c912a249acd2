// @ts-check
/**
 * The rooms this browser visited, newest first, kept in localStorage for the landing page.
 * Pure apart from the storage passed in (which may be null where the browser forbids it).
 */

export const RECENT_KEY = 'confab.recentRooms';
const MAX_RECENT = 8;
const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** @typedef {{name: string, at: number}} RecentRoom */

/**
 * @param {Pick<Storage, 'getItem'> | null} storage
 * @returns {RecentRoom[]}
 */
export function loadRecent(storage) {
  try {
    const raw = JSON.parse(storage?.getItem(RECENT_KEY) ?? '[]');
    if (!Array.isArray(raw)) return [];
    return raw
      .filter((r) => r && typeof r.name === 'string' && ROOM_RE.test(r.name) && typeof r.at === 'number')
      .slice(0, MAX_RECENT);
  } catch {
    return [];
  }
}

/**
 * The list with `name` moved (or added) to the front.
 * @param {RecentRoom[]} list
 * @param {string} name
 * @param {number} now
 * @returns {RecentRoom[]}
 */
export function withRecent(list, name, now) {
  return [{ name, at: now }, ...list.filter((r) => r.name !== name)].slice(0, MAX_RECENT);
}

/**
 * @param {RecentRoom[]} list
 * @param {string} name
 */
export function withoutRecent(list, name) {
  return list.filter((r) => r.name !== name);
}

/**
 * @param {Pick<Storage, 'setItem'> | null} storage
 * @param {RecentRoom[]} list
 */
export function saveRecent(storage, list) {
  try {
    storage?.setItem(RECENT_KEY, JSON.stringify(list));
  } catch {
    // Storage full or disabled: the list is just not remembered.
  }
}

/**
 * "just now", "5 min ago", "3 h ago", "yesterday", "4 days ago", or a date.
 * @param {number} at
 * @param {number} now
 */
export function timeAgo(at, now) {
  const s = Math.max(0, (now - at) / 1000);
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  if (s < 2 * 86400) return 'yesterday';
  if (s < 30 * 86400) return `${Math.floor(s / 86400)} days ago`;
  return new Date(at).toLocaleDateString();
}
