// @ts-check
/**
 * Background effects for the camera: blur, or a plain colour behind the person. The work is
 * done in a worker (background-worker.js: MediaPipe selfie segmentation and a 2D canvas);
 * this side only moves frames. An effect has one output track for its whole life, whatever
 * camera feeds it, so the connection swaps it in and out with `replaceTrack` and never
 * renegotiates (media.js decides which track is sent).
 *
 * Frames reach the worker one of two ways:
 * - where the browser has MediaStreamTrackProcessor and MediaStreamTrackGenerator (Chromium),
 *   the camera's frames stream to the worker and the composed ones stream back as a track,
 *   without the page's main thread;
 * - elsewhere a hidden `<video>` plays the camera, each frame goes to the worker as an
 *   ImageBitmap, and the composed one is drawn on a canvas whose `captureStream` is the output.
 *
 * The model and WASM come from confab itself (`/vendor/mediapipe/manifest.json` says where, or
 * why they are missing from this server); nothing is fetched from anywhere else.
 */

/** @typedef {'off' | 'blur' | 'colour'} BackgroundMode */

const MANIFEST_URL = '/vendor/mediapipe/manifest.json';
const WORKER_URL = '/web/background-worker.js';
/** The colour behind the person in `colour` mode (the page's own dark blue-grey). */
export const BACKGROUND_COLOUR = '#1f2a37';
/** How long loading the model may take before the effect gives up. */
const READY_TIMEOUT_MS = 20_000;

/** @type {Promise<{ok: boolean, reason: string, base: string}> | null} */
let availability = null;

/**
 * Whether this server and this browser can run the effect, and if not, a sentence saying why
 * (for the disabled button's description). Asked once per page.
 * @returns {Promise<{ok: boolean, reason: string, base: string}>}
 */
export function backgroundAvailability() {
  availability ??= (async () => {
    if (typeof Worker !== 'function' || typeof OffscreenCanvas !== 'function' || typeof WebAssembly !== 'object') {
      return { ok: false, reason: 'Background blur needs a newer browser (workers with OffscreenCanvas and WebAssembly).', base: '' };
    }
    try {
      const r = await fetch(MANIFEST_URL, { cache: 'no-cache' });
      const m = await r.json();
      if (!m.available) return { ok: false, reason: String(m.reason ?? 'Background blur is not available on this server.'), base: '' };
      return { ok: true, reason: '', base: String(m.base) };
    } catch {
      return { ok: false, reason: 'Background blur is not available: the server did not say where its files are.', base: '' };
    }
  })();
  return availability;
}

export class BackgroundEffect {
  /**
   * @param {string} base  where the MediaPipe files are served (from the manifest)
   */
  constructor(base) {
    this.base = base;
    /** @type {Worker | null} */
    this.worker = null;
    /** @type {MediaStreamTrack | null} the composed camera */
    this.output = null;
    /** @type {MediaStreamTrack | null} */
    this.input = null;
    /** @type {BackgroundMode} */
    this.mode = 'blur';
    /**
     * Frames composed per second and milliseconds of segmentation per frame, as last reported,
     * and how many 2-second reports there were.
     */
    this.stats = { fps: 0, segmentMs: 0, reports: 0 };
    /** @type {HTMLVideoElement | null} the fallback path's player */
    this.player = null;
    /** @type {HTMLCanvasElement | null} the fallback path's output canvas */
    this.canvas = null;
    this.stopped = false;
    this.streams = typeof (/** @type {any} */ (globalThis).MediaStreamTrackProcessor) === 'function' &&
      typeof (/** @type {any} */ (globalThis).MediaStreamTrackGenerator) === 'function';
    /** @type {(() => void) | null} stops feeding the current input (fallback path) */
    this.detach = null;
    /** @type {(() => void) | undefined} asks for the next frame (fallback path) */
    this.next = undefined;
    /** @type {any} the MediaStreamTrackGenerator (streams path) */
    this.generator = null;
    /** @type {Promise<void> | undefined} the current input's pipe into the generator */
    this.piping = undefined;
  }

  /**
   * Loads the model in a worker. Rejects with a readable message when it cannot.
   * @param {Exclude<BackgroundMode, 'off'>} mode
   */
  async load(mode) {
    this.mode = mode;
    const worker = new Worker(WORKER_URL);
    this.worker = worker;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('Background blur took too long to load.')), READY_TIMEOUT_MS);
      worker.onmessage = (e) => {
        if (e.data?.type === 'ready') {
          clearTimeout(timer);
          resolve(undefined);
        } else if (e.data?.type === 'error') {
          clearTimeout(timer);
          reject(new Error(`Background blur could not start: ${e.data.message}`));
        }
      };
      worker.onerror = (e) => {
        clearTimeout(timer);
        reject(new Error(`Background blur could not start: ${e.message || 'the worker failed'}`));
      };
      worker.postMessage({ type: 'init', base: this.base, mode, colour: BACKGROUND_COLOUR });
    });
    worker.onmessage = (e) => this.onMessage(e.data);
  }

  /** @param {any} m */
  onMessage(m) {
    if (m?.type === 'stats') this.stats = { fps: m.fps, segmentMs: m.segmentMs, reports: this.stats.reports + 1 };
    else if (m?.type === 'error') console.warn('confab: background effect', m.message);
    else if (m?.type === 'frame') this.drawFallback(m.bitmap);
  }

  /** @param {Exclude<BackgroundMode, 'off'>} mode */
  setMode(mode) {
    this.mode = mode;
    this.worker?.postMessage({ type: 'mode', mode, colour: BACKGROUND_COLOUR });
  }

  /**
   * Feeds `track` (a camera) into the effect; returns the output track, the same one for
   * every input.
   * @param {MediaStreamTrack} track
   * @returns {MediaStreamTrack}
   */
  setInput(track) {
    if (!this.worker) throw new Error('load() first');
    this.detach?.();
    this.input = track;
    return this.streams ? this.feedStreams(track) : this.feedFallback(track);
  }

  /** @param {MediaStreamTrack} track */
  feedStreams(track) {
    const g = /** @type {any} */ (globalThis);
    const processor = new g.MediaStreamTrackProcessor({ track, maxBufferSize: 1 });
    if (!this.generator) this.generator = new g.MediaStreamTrackGenerator({ kind: 'video' });
    this.output = this.generator;
    // The generator takes one writer at a time: each input gets a stream of its own, piped in
    // once the previous input's stream has ended (the worker ends it when a new one comes).
    const { readable, writable } = new TransformStream();
    const generator = this.generator;
    this.piping = (this.piping ?? Promise.resolve())
      .then(() => readable.pipeTo(generator.writable, { preventClose: true }))
      .catch(() => {});
    const input = processor.readable;
    /** @type {Worker} */ (this.worker).postMessage({ type: 'stream', readable: input, writable }, [input, writable]);
    this.detach = null;
    return /** @type {MediaStreamTrack} */ (this.output);
  }

  /** @param {MediaStreamTrack} track */
  feedFallback(track) {
    if (!this.canvas) {
      this.canvas = document.createElement('canvas');
      const settings = track.getSettings();
      this.canvas.width = settings.width ?? 640;
      this.canvas.height = settings.height ?? 360;
      this.output = this.canvas.captureStream(30).getVideoTracks()[0] ?? null;
    }
    const player = document.createElement('video');
    player.muted = true;
    player.playsInline = true;
    player.srcObject = new MediaStream([track]);
    player.play().catch(() => {});
    this.player = player;
    let live = true;
    this.detach = () => {
      live = false;
      player.srcObject = null;
    };
    this.next = () => {
      if (!live || this.stopped) return;
      const grab = () => {
        if (!live || this.stopped || player.videoWidth === 0) {
          setTimeout(grab, 50);
          return;
        }
        createImageBitmap(player)
          .then((bitmap) => this.worker?.postMessage({ type: 'frame', bitmap }, [bitmap]))
          .catch(() => setTimeout(grab, 50));
      };
      /** @type {any} */
      const v = player;
      if (typeof v.requestVideoFrameCallback === 'function') v.requestVideoFrameCallback(grab);
      else setTimeout(grab, 33);
    };
    this.next();
    return /** @type {MediaStreamTrack} */ (this.output);
  }

  /** @param {ImageBitmap} bitmap */
  drawFallback(bitmap) {
    const canvas = this.canvas;
    if (canvas && !this.stopped) {
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
      }
      canvas.getContext('2d')?.drawImage(bitmap, 0, 0);
    }
    bitmap.close();
    this.next?.();
  }

  /** Ends the effect: the worker, the feeding, the output track. */
  stop() {
    this.stopped = true;
    this.detach?.();
    this.worker?.terminate();
    this.worker = null;
    this.output?.stop();
    this.output = null;
  }
}
