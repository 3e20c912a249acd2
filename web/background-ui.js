// @ts-check
/**
 * The background controls of the meeting page: the **Blur background** toggles (prejoin and
 * meeting, `aria-pressed`) and the Background pickers (off, blurred, plain colour). They only
 * ask media.js for a mode and show what it reports; where this server or browser cannot run
 * the effect, they are disabled and their description says why.
 */
import { backgroundAvailability } from './background.js';

/** @typedef {import('./media.js').LocalMedia} LocalMedia */
/** @typedef {import('./background.js').BackgroundMode} BackgroundMode */

/**
 * @param {object} options
 * @param {LocalMedia} options.media
 * @param {HTMLButtonElement[]} options.toggles  the Blur background buttons
 * @param {HTMLSelectElement[]} options.pickers  the Background selects
 * @param {(button: HTMLButtonElement, text: string) => void} options.setTip
 * @param {(text: string) => void} options.toast
 */
export function wireBackground({ media, toggles, pickers, setTip, toast }) {
  /** @type {string | null} why the effect cannot run here at all */
  let unavailable = null;
  let busy = false;
  let watching = false;

  const show = () => {
    const mode = media.background;
    for (const b of toggles) {
      b.setAttribute('aria-pressed', String(mode === 'blur'));
      b.setAttribute('aria-busy', String(busy));
      b.disabled = watching || unavailable !== null;
      setTip(
        b,
        unavailable ?? (watching ? 'Not available when watching' : mode === 'blur' ? 'Stop blurring your background' : 'Blur your background'),
      );
    }
    for (const p of pickers) {
      p.value = mode;
      p.disabled = watching || unavailable !== null;
      p.title = unavailable ?? '';
    }
  };

  /** @param {BackgroundMode} mode */
  const choose = async (mode) => {
    busy = true;
    show();
    const ok = await media.setBackground(mode);
    busy = false;
    show();
    if (!ok && mode !== 'off' && media.backgroundProblem) toast(media.backgroundProblem);
  };

  for (const b of toggles) b.addEventListener('click', () => choose(media.background === 'blur' ? 'off' : 'blur'));
  for (const p of pickers) {
    p.addEventListener('change', () => choose(/** @type {BackgroundMode} */ (p.value)));
  }
  media.addEventListener('background', () => show());
  backgroundAvailability().then((a) => {
    unavailable = a.ok ? null : a.reason;
    show();
  });
  // For people and browser tests: the effect's own frame rate and segmentation time.
  /** @type {any} */ (window).confabBackground = () => ({ mode: media.background, ...(media.effect?.stats ?? {}) });
  show();
  return {
    /** Viewers send no camera: the controls are off for them. @param {boolean} on */
    setWatching(on) {
      watching = on;
      show();
    },
  };
}
