// @ts-check
/**
 * The background blur's worker (a classic worker: the MediaPipe solution loads its WASM
 * loader with `importScripts`). Per frame: MediaPipe selfie segmentation says which pixels are
 * the person, then a 2D canvas composes the person over a blurred copy of the frame (or over a
 * plain colour). Nothing here touches the page: frames come in and go out as messages or
 * transferred streams (background.js), so the page's main thread stays free, and a hidden tab
 * keeps sending (workers are not throttled like a page's timers and animation frames).
 *
 * The solution (`@mediapipe/selfie_segmentation`, served by confab at a pinned version; see
 * server/src/mediapipe.rs) was written for pages; in a worker it needs two shims, both for
 * that pinned version:
 * - its worker path `importScripts` every file of its list, the model included, which is no
 *   script: the model is left out of that call (the solution fetches it itself, as on a page);
 * - its worker path never records the WebGL context it creates for its input frames: that
 *   context is looked up on its canvas and recorded where `send` expects it.
 *
 * Inference runs on the CPU (TFLite with WASM SIMD): on this project's test machine it takes
 * about 30 ms a frame, against 200 ms through software WebGL; a laptop GPU would be quicker
 * still, but CPU inference does not depend on a GPU or its driver.
 *
 * Messages in: `init` {base, mode, colour}; `mode` {mode, colour}; `stream` {readable,
 * writable} (frames as VideoFrames); `frame` {bitmap} (one ImageBitmap, answered by `frame`).
 * Out: `ready`, `error` {message}, `frame` {bitmap}, `stats` {fps, segmentMs}.
 */

/** @typedef {'blur' | 'colour'} Mode */

/** @type {any} the worker's global scope (tsc checks this file with the page's types) */
const scope = self;

/** Background blur radius, in pixels of the quarter-size copy that is blurred. */
const BLUR_PX = 4;
/** The mask is read back at this size: enough for a soft edge, cheap to convert. */
const MASK_W = 160;
const MASK_H = 90;

/** @type {any} */
let segmenter = null;
/** @type {ImageBitmap | OffscreenCanvas | null} the latest mask (person in red, opaque) */
let mask = null;
/** @type {Mode} */
let mode = 'blur';
let colour = '#1f2a37';
let composed = 0;
let segmentMs = 0;
let since = performance.now();

/** @type {ReadableStreamDefaultReader<VideoFrame> | null} the input being pumped */
let currentReader = null;

/** @type {{out: OffscreenCanvas, person: OffscreenCanvas, back: OffscreenCanvas, small: OffscreenCanvas} | null} */
let canvases = null;

/** @param {unknown} msg @param {Transferable[]} [transfer] */
function post(msg, transfer = []) {
  scope.postMessage(msg, transfer);
}

/** @param {string} base  where the solution's files are served, ending in `/` */
async function load(base) {
  const realImport = scope.importScripts.bind(scope);
  scope.importScripts = (/** @type {string[]} */ ...urls) =>
    realImport(...urls.filter((u) => !u.endsWith('.tflite')));
  scope.Module = { locateFile: (/** @type {string} */ f) => base + f };
  realImport(`${base}selfie_segmentation.js`);
  const seg = new scope.SelfieSegmentation({ locateFile: (/** @type {string} */ f) => base + f });
  seg.setOptions({ modelSelection: 1, selfieMode: false, useCpuInference: true });
  seg.onResults((/** @type {{segmentationMask: ImageBitmap}} */ r) => {
    mask = r.segmentationMask;
  });
  await seg.initialize();
  // The second shim (see the top of this file): `h` is the solution's runner, `m` its canvas,
  // `K` the context `send` uploads frames with.
  const runner = seg.h;
  if (runner && !runner.K && runner.m) runner.K = runner.m.getContext('webgl2') ?? runner.m.getContext('webgl');
  segmenter = seg;
}

/**
 * @param {number} w
 * @param {number} h
 */
function canvasesFor(w, h) {
  if (!canvases || canvases.out.width !== w || canvases.out.height !== h) {
    canvases = {
      out: new OffscreenCanvas(w, h),
      person: new OffscreenCanvas(w, h),
      back: new OffscreenCanvas(Math.max(1, Math.round(w / 4)), Math.max(1, Math.round(h / 4))),
      small: new OffscreenCanvas(MASK_W, MASK_H),
    };
  }
  return canvases;
}

/** @param {OffscreenCanvas} c */
function ctx2d(c) {
  const ctx = /** @type {OffscreenCanvasRenderingContext2D | null} */ (c.getContext('2d', { willReadFrequently: c.width === MASK_W }));
  if (!ctx) throw new Error('no 2D canvas in this worker');
  return ctx;
}

/**
 * Composes one frame: the person (by the mask) over the blurred frame or the colour.
 * @param {ImageBitmap} frame
 * @returns {Promise<OffscreenCanvas>}
 */
async function compose(frame) {
  const w = frame.width;
  const h = frame.height;
  const c = canvasesFor(w, h);
  const t0 = performance.now();
  await segmenter.send({ image: frame });
  segmentMs += performance.now() - t0;
  const out = ctx2d(c.out);
  if (!mask) {
    out.drawImage(frame, 0, 0);
    return c.out;
  }
  // The mask says "person" in its red channel with an opaque alpha: move red into alpha on a
  // small copy, whose upscaling below also softens the edge.
  const small = ctx2d(c.small);
  small.globalCompositeOperation = 'copy';
  small.drawImage(mask, 0, 0, MASK_W, MASK_H);
  const px = small.getImageData(0, 0, MASK_W, MASK_H);
  const d = px.data;
  for (let i = 0; i < d.length; i += 4) d[i + 3] = d[i];
  small.putImageData(px, 0, 0);

  const person = ctx2d(c.person);
  person.globalCompositeOperation = 'copy';
  person.imageSmoothingQuality = 'high';
  person.drawImage(c.small, 0, 0, w, h);
  person.globalCompositeOperation = 'source-in';
  person.drawImage(frame, 0, 0);

  out.globalCompositeOperation = 'copy';
  if (mode === 'blur') {
    // Blurring a quarter-size copy and scaling it up looks the same as a 4x wider blur of
    // the full frame, for a sixteenth of the work.
    const back = ctx2d(c.back);
    back.filter = `blur(${BLUR_PX}px)`;
    back.drawImage(frame, 0, 0, c.back.width, c.back.height);
    out.drawImage(c.back, 0, 0, w, h);
  } else {
    out.fillStyle = colour;
    out.fillRect(0, 0, w, h);
  }
  out.globalCompositeOperation = 'source-over';
  out.drawImage(c.person, 0, 0);
  return c.out;
}

function count() {
  composed += 1;
  const now = performance.now();
  if (now - since >= 2_000) {
    post({ type: 'stats', fps: (composed * 1000) / (now - since), segmentMs: segmentMs / Math.max(1, composed) });
    composed = 0;
    segmentMs = 0;
    since = now;
  }
}

/**
 * Frames as a stream (Chromium's MediaStreamTrackProcessor → MediaStreamTrackGenerator).
 * @param {ReadableStream<VideoFrame>} readable
 * @param {WritableStream<VideoFrame>} writable
 */
async function pump(readable, writable) {
  // A new input replaces the current one: its stream ends here, which ends its pump.
  currentReader?.cancel().catch(() => {});
  const reader = readable.getReader();
  currentReader = reader;
  const writer = writable.getWriter();
  for (;;) {
    const { value: frame, done } = await reader.read();
    if (done || !frame) break;
    try {
      const bitmap = await createImageBitmap(frame);
      const out = await compose(bitmap);
      bitmap.close();
      await writer.write(new VideoFrame(out, { timestamp: frame.timestamp ?? 0 }));
      count();
    } catch (err) {
      post({ type: 'error', message: String(err) });
    } finally {
      frame.close();
    }
  }
  if (currentReader === reader) currentReader = null;
  writer.close().catch(() => {});
}

scope.onmessage = async (/** @type {MessageEvent} */ e) => {
  const m = e.data;
  try {
    if (m.type === 'init') {
      mode = m.mode;
      colour = m.colour ?? colour;
      await load(m.base);
      post({ type: 'ready' });
    } else if (m.type === 'mode') {
      mode = m.mode;
      colour = m.colour ?? colour;
    } else if (m.type === 'stream') {
      pump(m.readable, m.writable).catch((err) => post({ type: 'error', message: String(err) }));
    } else if (m.type === 'frame') {
      /** @type {ImageBitmap} */
      const frame = m.bitmap;
      const out = await compose(frame);
      frame.close();
      const bitmap = out.transferToImageBitmap();
      post({ type: 'frame', bitmap }, [bitmap]);
      count();
    }
  } catch (err) {
    post({ type: 'error', message: err instanceof Error ? err.message : String(err) });
  }
};
