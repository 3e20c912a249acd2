// @ts-check
/**
 * Colour contrast of web/style.css against WCAG 2.1 AA: 4.5:1 for text, 3:1 for large text,
 * icons and focus rings. The colours are read from the stylesheet's custom properties, so a
 * change there is checked; the pairs are the ones the pages put together.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from './server.js';

const css = readFileSync(path.join(REPO_ROOT, 'web/style.css'), 'utf8');
const root = /:root\s*{([^}]*)}/.exec(css)?.[1] ?? '';
/** @type {Map<string, string>} */
const vars = new Map([...root.matchAll(/--([\w-]+):\s*(#[0-9a-fA-F]{6})\s*;/g)].map((m) => [m[1], m[2]]));

/**
 * @param {string} colour  `#rrggbb` or `var-name`
 * @returns {[number, number, number]}
 */
function rgb(colour) {
  const hex = colour.startsWith('#') ? colour : vars.get(colour);
  assert.ok(hex, `no colour ${colour} in style.css :root`);
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

/** @param {[number, number, number]} c */
function luminance(c) {
  const [r, g, b] = c.map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

/**
 * @param {string} a
 * @param {string} b
 */
function contrast(a, b) {
  const [hi, lo] = [luminance(rgb(a)), luminance(rgb(b))].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

/**
 * A translucent colour over a backdrop, as `#rrggbb`.
 * @param {[number, number, number]} fg
 * @param {number} alpha
 * @param {[number, number, number]} bg
 */
function over(fg, alpha, bg) {
  return `#${fg.map((v, i) => Math.round(v * alpha + bg[i] * (1 - alpha)).toString(16).padStart(2, '0')).join('')}`;
}

test('text and controls meet WCAG AA contrast', () => {
  // Captions and tile buttons sit on a 72% dark backdrop over any picture; white is the worst.
  const caption = over([10, 12, 18], 0.72, [255, 255, 255]);
  /** @type {Array<[string, string, number, string]>} */
  const pairs = [
    ['text', 'bg', 4.5, 'body text'],
    ['text', 'surface', 4.5, 'panels'],
    ['text', 'surface-2', 4.5, 'menus, chat bubbles'],
    ['text', 'surface-3', 4.5, 'buttons'],
    ['muted', 'bg', 4.5, 'secondary text'],
    ['muted', 'surface', 4.5, 'secondary text on panels'],
    ['muted', 'surface-2', 4.5, 'message times'],
    ['accent-text', 'accent', 4.5, 'primary buttons'],
    ['#ffffff', 'danger', 4.5, 'Leave, muted toggles'],
    ['danger-soft', 'bg', 4.5, 'error text'],
    ['danger-soft', 'surface', 4.5, 'error text on panels'],
    ['fair', 'bg', 4.5, 'device problems'],
    ['accent-bright', 'bg', 4.5, 'links'],
    ['accent-bright', 'surface', 4.5, 'links on panels'],
    ['#0d1017', '#f1f3f7', 4.5, 'tooltips'],
    ['#1b1400', '#f0b429', 4.5, 'the reconnecting banner'],
    ['#0d1017', '#e8ebf1', 4.5, 'toasts'],
    ['text', caption, 4.5, 'tile captions'],
    ['danger-soft', caption, 3, 'muted indicators'],
    ['good', caption, 3, 'quality: good'],
    ['fair', caption, 3, 'quality: fair'],
    ['poor', caption, 3, 'quality: poor'],
    ['focus', 'bg', 3, 'focus ring'],
    ['focus', 'surface', 3, 'focus ring on panels'],
    ['accent-bright', caption, 3, 'active speaker outline'],
  ];
  const failures = pairs
    .map(([fg, bg, min, what]) => ({ what, fg, bg, min, ratio: Math.round(contrast(fg, bg) * 100) / 100 }))
    .filter((p) => p.ratio < p.min);
  assert.deepEqual(failures, []);
});
