// @ts-check
/**
 * Where the tiles of the meeting go: pure geometry, no DOM. room.js measures the stage, asks
 * `layoutTiles` for one rectangle per tile and positions the tiles absolutely, so that any
 * number of tiles (1–25 and beyond) fits the stage without scrolling, on a wide desktop
 * window as well as on a phone held upright.
 *
 * Two modes:
 * - grid: every tile the same size, as large as the stage allows; rows are centred and the
 *   last, shorter row too.
 * - spotlight: one tile (pinned by the user, or a screen share) fills most of the stage and
 *   the others share a strip beside it (landscape) or below it (portrait).
 */

/**
 * @typedef {object} Rect
 * @property {number} x
 * @property {number} y
 * @property {number} width
 * @property {number} height
 */

/**
 * @typedef {object} GridFit
 * @property {number} cols
 * @property {number} rows
 * @property {number} width   of one tile
 * @property {number} height  of one tile
 */

/**
 * Tile aspect ratios (width / height) a stage allows. A camera is 4:3 or 16:9; a wide stage
 * keeps tiles between those, a phone also accepts upright tiles down to 9:16 (the video is
 * cropped to fill them, as phone meeting apps do).
 * @param {number} width
 * @param {number} height
 */
export function aspectRange(width, height) {
  const portrait = height > width;
  return { min: portrait ? 9 / 16 : 4 / 3, max: 16 / 9 };
}

/**
 * The column count that gives `count` equal tiles the largest area in a `width`×`height` box.
 * Each tile takes the aspect of its cell, clamped to [min, max]; ties go to fewer empty cells.
 * @param {number} count
 * @param {number} width
 * @param {number} height
 * @param {{gap?: number, min?: number, max?: number}} [options]
 * @returns {GridFit}
 */
export function fitGrid(count, width, height, { gap = 8, min = 4 / 3, max = 16 / 9 } = {}) {
  /** @type {GridFit} */
  let best = { cols: 1, rows: Math.max(1, count), width: 0, height: 0 };
  let bestScore = -1;
  for (let cols = 1; cols <= Math.max(1, count); cols++) {
    const rows = Math.ceil(count / cols);
    const cellW = (width - gap * (cols - 1)) / cols;
    const cellH = (height - gap * (rows - 1)) / rows;
    if (cellW <= 0 || cellH <= 0) continue;
    const aspect = Math.min(max, Math.max(min, cellW / cellH));
    let w = cellW;
    let h = w / aspect;
    if (h > cellH) {
      h = cellH;
      w = h * aspect;
    }
    const empty = cols * rows - count;
    // Area decides; an empty cell costs a hair, so 2×2 beats 3×2 for four tiles of equal size.
    const score = w * h - empty * 1e-3;
    if (score > bestScore) {
      bestScore = score;
      best = { cols, rows, width: Math.floor(w), height: Math.floor(h) };
    }
  }
  return best;
}

/**
 * Rectangles of `count` equal tiles laid out in rows inside `area`, centred both ways.
 * @param {number} count
 * @param {Rect} area
 * @param {{gap?: number, min?: number, max?: number}} [options]
 * @returns {Rect[]}
 */
export function gridRects(count, area, options = {}) {
  const gap = options.gap ?? 8;
  if (count <= 0) return [];
  const fit = fitGrid(count, area.width, area.height, options);
  const { cols, rows, width, height } = fit;
  const blockH = rows * height + (rows - 1) * gap;
  const top = area.y + Math.max(0, (area.height - blockH) / 2);
  /** @type {Rect[]} */
  const out = [];
  for (let i = 0; i < count; i++) {
    const row = Math.floor(i / cols);
    const inRow = row === rows - 1 ? count - row * cols : cols;
    const col = i - row * cols;
    const rowW = inRow * width + (inRow - 1) * gap;
    const left = area.x + Math.max(0, (area.width - rowW) / 2);
    out.push({
      x: Math.round(left + col * (width + gap)),
      y: Math.round(top + row * (height + gap)),
      width,
      height,
    });
  }
  return out;
}

/**
 * One rectangle per tile, in the order given.
 * @param {object} options
 * @param {number} options.count     number of tiles
 * @param {number} options.width     stage size in CSS pixels
 * @param {number} options.height
 * @param {number | null} [options.spotlight]  index of the tile to show large, if any
 * @param {number} [options.gap]
 * @returns {Rect[]}
 */
export function layoutTiles({ count, width, height, spotlight = null, gap = 8 }) {
  const range = aspectRange(width, height);
  const stage = { x: 0, y: 0, width, height };
  if (spotlight === null || spotlight < 0 || spotlight >= count) {
    return gridRects(count, stage, { gap, ...range });
  }
  if (count === 1) return [stage];
  const landscape = width >= height;
  /** @type {Rect} */
  let main;
  /** @type {Rect} */
  let strip;
  if (landscape) {
    const stripW = Math.round(Math.min(280, Math.max(140, width * 0.2)));
    main = { x: 0, y: 0, width: width - stripW - gap, height };
    strip = { x: width - stripW, y: 0, width: stripW, height };
  } else {
    const stripH = Math.round(Math.min(180, Math.max(96, height * 0.22)));
    main = { x: 0, y: 0, width, height: height - stripH - gap };
    strip = { x: 0, y: height - stripH, width, height: stripH };
  }
  const others = gridRects(count - 1, strip, { gap, min: 4 / 3, max: 16 / 9 });
  /** @type {Rect[]} */
  const out = [];
  let k = 0;
  for (let i = 0; i < count; i++) out.push(i === spotlight ? main : others[k++]);
  return out;
}
