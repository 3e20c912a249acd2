// @ts-check
/**
 * The detail view of an image shared in the chat: the server's preview (upright, at most
 * 1280 px, without the original's EXIF and GPS metadata) large, what it saves against the
 * original, how faithful it is (PSNR and SSIM against the original scaled to the same size,
 * computed once by the server), and a link to the original. The figures come from
 * `GET {file url}/meta` (docs/protocol.md, "Files").
 */
import { fileUrlWithToken, formatSize } from './chat.js';

/**
 * @typedef {object} PreviewInfo
 * @property {string} url
 * @property {number} width
 * @property {number} height
 * @property {number} bytes
 * @property {number} original_width
 * @property {number} original_height
 * @property {number} psnr  dB
 * @property {number} ssim
 */

/**
 * @typedef {object} FileMeta
 * @property {string} name
 * @property {number} size
 * @property {string} mime
 * @property {string} url
 * @property {PreviewInfo | null} preview
 * @property {string | null} preview_error
 */

/**
 * The sentences the detail view shows about a preview (pure, for tests).
 * @param {FileMeta} meta
 * @returns {{saving: string, fidelity: string}}
 */
export function describePreview(meta) {
  const p = meta.preview;
  if (!p) {
    return { saving: meta.preview_error ? `No preview: ${meta.preview_error}.` : 'No preview.', fidelity: '' };
  }
  const saved = meta.size > 0 ? Math.round((100 * (meta.size - p.bytes)) / meta.size) : 0;
  const saving =
    `Preview ${p.width}×${p.height}, ${formatSize(p.bytes)}: ` +
    (saved > 0 ? `${saved} % smaller than` : saved < 0 ? `${-saved} % larger than` : 'as large as') +
    ` the original (${p.original_width}×${p.original_height}, ${formatSize(meta.size)}).`;
  const fidelity = `PSNR ${p.psnr.toFixed(1)} dB, SSIM ${p.ssim.toFixed(3)} against the original scaled to ${p.width}×${p.height}.`;
  return { saving, fidelity };
}

/** @type {HTMLDialogElement | null} */
let dialog = null;

/** The dialog, made on first use. */
function theDialog() {
  if (dialog) return dialog;
  const d = document.createElement('dialog');
  d.className = 'settings image-detail';
  d.id = 'image-detail';
  d.setAttribute('aria-labelledby', 'image-detail-title');
  const form = document.createElement('form');
  form.method = 'dialog';
  form.className = 'settings-form';
  const title = document.createElement('h2');
  title.id = 'image-detail-title';
  const figure = document.createElement('figure');
  const img = document.createElement('img');
  const caption = document.createElement('figcaption');
  const saving = document.createElement('p');
  saving.className = 'preview-saving';
  const fidelity = document.createElement('p');
  fidelity.className = 'preview-fidelity';
  caption.append(saving, fidelity);
  figure.append(img, caption);
  const actions = document.createElement('div');
  actions.className = 'actions';
  const original = document.createElement('a');
  original.className = 'button';
  original.textContent = 'Download the original';
  original.rel = 'noopener noreferrer';
  const close = document.createElement('button');
  close.type = 'submit';
  close.className = 'primary';
  close.textContent = 'Close';
  actions.append(original, close);
  form.append(title, figure, actions);
  d.append(form);
  document.body.append(d);
  dialog = d;
  return d;
}

/**
 * Opens the detail view of a shared image.
 * @param {{name: string, url: string, token: string | null}} file  `url`: the file's plain URL
 */
export async function openImageDetail({ name, url, token }) {
  const d = theDialog();
  const withToken = (/** @type {string} */ u) => fileUrlWithToken(new URL(u, location.origin).href, token, location.origin);
  const title = /** @type {HTMLElement} */ (d.querySelector('h2'));
  const img = /** @type {HTMLImageElement} */ (d.querySelector('img'));
  const saving = /** @type {HTMLElement} */ (d.querySelector('.preview-saving'));
  const fidelity = /** @type {HTMLElement} */ (d.querySelector('.preview-fidelity'));
  const original = /** @type {HTMLAnchorElement} */ (d.querySelector('a'));
  title.textContent = name;
  img.alt = name;
  img.removeAttribute('src');
  saving.textContent = 'Loading…';
  fidelity.textContent = '';
  original.href = withToken(url);
  original.download = name;
  if (!d.open) d.showModal();
  try {
    const r = await fetch(withToken(`${url}/meta`));
    /** @type {FileMeta} */
    const meta = await r.json();
    if (!r.ok) throw new Error(/** @type {any} */ (meta).error ?? `status ${r.status}`);
    const text = describePreview(meta);
    saving.textContent = text.saving;
    fidelity.textContent = text.fidelity;
    img.src = withToken(meta.preview ? meta.preview.url : url);
  } catch (err) {
    saving.textContent = `No details: ${err instanceof Error ? err.message : err}`;
    img.src = withToken(url);
  }
}
