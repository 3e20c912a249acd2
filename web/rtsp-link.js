// @ts-check
/**
 * **Copy RTSP link** in a tile's menu: asks the server for the participant's RTSP address
 * (`GET /api/rooms/{room}/participants/{id}/rtsp-link` with our upload token; docs/protocol.md),
 * which names the port the server really listens on and, in a protected room, carries a
 * short-lived viewer token; copies it, and shows it in the menu with how to watch it (VLC,
 * ffplay), so it can be copied by hand where the clipboard is not allowed.
 */

/** @typedef {import('./tiles.js').TileGrid} TileGrid */
/** @typedef {import('./protocol.js').ConfabClient} ConfabClient */

/**
 * Fetches the RTSP link of `participant` in `room`.
 * @param {string} room
 * @param {string} participant
 * @param {string} uploadToken
 * @returns {Promise<string>}
 */
export async function fetchRtspLink(room, participant, uploadToken) {
  const r = await fetch(`/api/rooms/${encodeURIComponent(room)}/participants/${encodeURIComponent(participant)}/rtsp-link`, {
    headers: { Authorization: `Bearer ${uploadToken}` },
    cache: 'no-store',
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok || typeof body.url !== 'string') throw new Error(body.error ?? `the server answered ${r.status}`);
  return body.url;
}

/**
 * @param {object} options
 * @param {TileGrid} options.tiles
 * @param {string} options.room
 * @param {() => ConfabClient | null} options.client  the current connection
 * @param {(text: string) => void} options.toast
 */
export function wireRtspLinks({ tiles, room, client, toast }) {
  tiles.addEventListener('copy-rtsp', async (e) => {
    const { key, participant } = /** @type {CustomEvent} */ (e).detail;
    const token = client()?.uploadToken;
    if (!token) {
      tiles.showRtspLink(key, { error: 'Not connected; try again in a moment.' });
      return;
    }
    let url;
    try {
      url = await fetchRtspLink(room, participant, token);
    } catch (err) {
      tiles.showRtspLink(key, { error: `No RTSP link: ${err instanceof Error ? err.message : err}` });
      return;
    }
    let copied = false;
    try {
      await navigator.clipboard.writeText(url);
      copied = true;
      toast('RTSP link copied. Open it in VLC or ffplay.');
    } catch {
      // Shown in the menu to copy by hand.
    }
    tiles.showRtspLink(key, { url, copied });
  });
}
