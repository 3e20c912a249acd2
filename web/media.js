// @ts-check
/**
 * Local media: the camera, microphone and speaker the user picked, the microphone level, a
 * screen share or a video file played into the room, and the black placeholder that stands in
 * for a missing camera (protocol.js explains why). No drawing and no networking here:
 * session.js hands these tracks to the connection, room.js shows them.
 *
 * Permission problems and missing devices are reported as plain sentences (`describeMediaError`)
 * so that the prejoin view can say what happened and what to do; a person without any device
 * still joins, as a viewer.
 */

import { BackgroundEffect, backgroundAvailability } from './background.js';

/** @typedef {import('./protocol.js').Source} Source */
/** @typedef {import('./background.js').BackgroundMode} BackgroundMode */

const CAMERA_KEY = 'confab.camera';
const MICROPHONE_KEY = 'confab.microphone';
const SPEAKER_KEY = 'confab.speaker';
const BACKGROUND_KEY = 'confab.background';

/** What we ask cameras for: enough for a tile, cheap to send to many. */
const VIDEO_CONSTRAINTS = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };

/**
 * A sentence about why a device could not be opened, and what to do.
 * @param {unknown} err  what getUserMedia rejected with
 * @param {'camera' | 'microphone' | 'camera and microphone'} what
 */
export function describeMediaError(err, what) {
  const name = err instanceof Error || (typeof err === 'object' && err !== null && 'name' in err)
    ? String(/** @type {{name: unknown}} */ (err).name)
    : '';
  const It = what.charAt(0).toUpperCase() + what.slice(1);
  switch (name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return `${It}: access is blocked. Allow it in your browser's site settings (the icon next to the address), then reload — or join without it.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return `No ${what} found. You can still join and take part without it.`;
    case 'NotReadableError':
    case 'AbortError':
      return `${It} is in use by another application or could not start. Close that application and try again.`;
    case 'TypeError':
      return `${It} is only available on a secure (https) page.`;
    default:
      return `${It} could not be opened${name ? ` (${name})` : ''}. You can still join without it.`;
  }
}

/**
 * A storage area or null where the browser forbids it.
 * @returns {Storage | null}
 */
function storage() {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

/** @param {string} key */
function remembered(key) {
  try {
    return storage()?.getItem(key) ?? '';
  } catch {
    return '';
  }
}

/**
 * @param {string} key
 * @param {string} value
 */
function remember(key, value) {
  try {
    storage()?.setItem(key, value);
  } catch {
    // Storage can be disabled; the choice is just not remembered.
  }
}

/**
 * The user's devices and the tracks taken from them.
 *
 * Events (`CustomEvent`s):
 * - `change`: `{source, track}` — the track of a source changed (a new device, camera on or
 *   off, a share started or ended)
 * - `devices`: `{}` — the device lists changed (plugged in, unplugged, permission granted)
 * - `share-ended`: `{}` — the screen share or file ended by itself (browser's stop button,
 *   end of the file)
 * - `background`: `{mode, problem}` — the background effect changed, or could not start
 *
 * The camera track that is shown and sent is `cameraOut`: the device's track, or with a
 * background effect on, the effect's output (background.js), which stays the same track
 * while the device behind it changes.
 */
export class LocalMedia extends EventTarget {
  constructor() {
    super();
    /** @type {MediaStreamTrack | null} */
    this.microphone = null;
    /** @type {MediaStreamTrack | null} */
    this.camera = null;
    /** @type {MediaStreamTrack | null} */
    this.screen = null;
    /** @type {MediaStreamTrack | null} */
    this.screenAudio = null;
    /** What is being shared: the screen, a video file, or nothing. */
    /** @type {'screen' | 'file' | null} */
    this.sharing = null;
    this.micOn = true;
    this.camOn = true;
    /** Problems met opening the devices, as sentences for the prejoin view. */
    /** @type {{camera: string | null, microphone: string | null}} */
    this.problems = { camera: null, microphone: null };
    /** @type {MediaDeviceInfo[]} */
    this.devices = [];
    this.cameraId = remembered(CAMERA_KEY);
    this.microphoneId = remembered(MICROPHONE_KEY);
    this.speakerId = remembered(SPEAKER_KEY);
    /** @type {HTMLVideoElement | null} plays a shared file; not part of the page */
    this.filePlayer = null;
    /** @type {string | null} */
    this.fileUrl = null;
    this.gotPermission = false;
    /** @type {BackgroundMode} what the user chose (kept for the next visit) */
    this.background = /** @type {BackgroundMode} */ (['blur', 'colour'].includes(remembered(BACKGROUND_KEY)) ? remembered(BACKGROUND_KEY) : 'off');
    /** @type {string | null} why the effect is not available or failed, as a sentence */
    this.backgroundProblem = null;
    /** @type {BackgroundEffect | null} */
    this.effect = null;
    /** @type {MediaStreamTrack | null} the effect's output while it has the camera */
    this.effected = null;
    /** Background changes run one after another (loading the model takes a moment). */
    this.backgroundQueue = Promise.resolve(true);
    navigator.mediaDevices?.addEventListener?.('devicechange', () => this.refreshDevices());
  }

  /** Whether the browser can capture a screen at all (not on phones, for instance). */
  get canShareScreen() {
    return typeof navigator.mediaDevices?.getDisplayMedia === 'function';
  }

  /** Whether speakers can be chosen (`setSinkId`; Chromium, Firefox, recent Safari). */
  get canPickSpeaker() {
    return typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;
  }

  /** The camera as shown and sent: with the background effect when it is on. */
  get cameraOut() {
    return this.camera && this.effected ? this.effected : this.camera;
  }

  /**
   * The tracks to publish now, by source. The microphone is sent even while muted (its
   * `enabled` is false), the camera only while on.
   * @returns {Partial<Record<Source, MediaStreamTrack | null>>}
   */
  tracks() {
    return {
      microphone: this.microphone,
      camera: this.camOn ? this.cameraOut : null,
      screen: this.screen,
      'screen-audio': this.screenAudio,
    };
  }

  /**
   * Opens the remembered (or default) camera and microphone. Each one that fails is noted in
   * `problems`; having neither is fine (viewer).
   */
  async open() {
    const md = navigator.mediaDevices;
    if (!md?.getUserMedia) {
      const why = 'This page cannot use a camera or microphone (it needs https, or a newer browser). You can still join and watch.';
      this.problems = { camera: why, microphone: why };
      return;
    }
    // One prompt for both where possible; then each alone, so that one missing or blocked
    // device does not cost the other.
    try {
      const stream = await md.getUserMedia({
        audio: this.audioConstraints(),
        video: this.videoConstraints(),
      });
      this.microphone = stream.getAudioTracks()[0] ?? null;
      this.camera = stream.getVideoTracks()[0] ?? null;
    } catch (both) {
      console.info('confab: camera and microphone together failed', both);
      await this.openCamera().catch(() => {});
      await this.openMicrophone().catch(() => {});
    }
    this.gotPermission = Boolean(this.camera || this.microphone);
    if (this.microphone) this.microphone.enabled = this.micOn;
    for (const t of [this.camera, this.microphone]) if (t) this.watchEnded(t);
    await this.refreshDevices();
    // The effect chosen last time starts by itself; the raw camera shows until it is ready.
    if (this.background !== 'off') this.setBackground(this.background);
  }

  /**
   * Turns the background effect on (`blur`, `colour`) or off. Resolves false, with the reason
   * in `backgroundProblem`, when it cannot run here.
   * @param {BackgroundMode} mode
   * @returns {Promise<boolean>}
   */
  setBackground(mode) {
    const run = async () => {
      this.background = mode;
      remember(BACKGROUND_KEY, mode);
      if (mode === 'off') {
        this.effect?.stop();
        this.effect = null;
        this.effected = null;
        this.cameraChanged();
        this.emit('background', { mode, problem: null });
        return true;
      }
      if (!this.effect) {
        const available = await backgroundAvailability();
        const effect = available.ok ? new BackgroundEffect(available.base) : null;
        try {
          if (!effect) throw new Error(available.reason);
          await effect.load(mode);
        } catch (err) {
          effect?.stop();
          this.background = 'off';
          this.backgroundProblem = err instanceof Error ? err.message : String(err);
          this.emit('background', { mode: 'off', problem: this.backgroundProblem });
          return false;
        }
        // Turned off (or left) while loading.
        if (this.background !== mode) {
          effect.stop();
          return false;
        }
        this.effect = effect;
      } else {
        this.effect.setMode(mode);
      }
      this.backgroundProblem = null;
      this.cameraChanged();
      this.emit('background', { mode, problem: null });
      return true;
    };
    this.backgroundQueue = this.backgroundQueue.then(run, run);
    return this.backgroundQueue;
  }

  /**
   * The camera device changed (on, off, another one): feeds it to the effect, if any, and
   * tells listeners which track to show and send now.
   */
  cameraChanged() {
    if (this.effect && this.camera) {
      if (this.effect.input !== this.camera) this.effected = this.effect.setInput(this.camera);
    } else {
      this.effected = null;
    }
    this.emit('change', { source: 'camera', track: this.camOn ? this.cameraOut : null });
  }

  audioConstraints() {
    return this.microphoneId ? { deviceId: { exact: this.microphoneId } } : true;
  }

  videoConstraints() {
    return this.cameraId ? { ...VIDEO_CONSTRAINTS, deviceId: { exact: this.cameraId } } : VIDEO_CONSTRAINTS;
  }

  /**
   * Opens the chosen camera; on failure notes the problem, leaves `camera` null and rethrows.
   * @returns {Promise<MediaStreamTrack | null>}
   */
  async openCamera() {
    try {
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: this.videoConstraints() });
      } catch (err) {
        // A remembered device that is gone: fall back to any camera.
        if (!this.cameraId || /** @type {any} */ (err)?.name !== 'OverconstrainedError') throw err;
        this.cameraId = '';
        stream = await navigator.mediaDevices.getUserMedia({ video: VIDEO_CONSTRAINTS });
      }
      this.camera = stream.getVideoTracks()[0] ?? null;
      this.problems.camera = null;
      return this.camera;
    } catch (err) {
      console.info('confab: camera failed', err);
      this.camera = null;
      this.problems.camera = describeMediaError(err, 'camera');
      throw err;
    }
  }

  /**
   * Opens the chosen microphone; on failure notes the problem, leaves `microphone` null and
   * rethrows.
   * @returns {Promise<MediaStreamTrack | null>}
   */
  async openMicrophone() {
    try {
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: this.audioConstraints() });
      } catch (err) {
        if (!this.microphoneId || /** @type {any} */ (err)?.name !== 'OverconstrainedError') throw err;
        this.microphoneId = '';
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      }
      this.microphone = stream.getAudioTracks()[0] ?? null;
      this.problems.microphone = null;
      return this.microphone;
    } catch (err) {
      console.info('confab: microphone failed', err);
      this.microphone = null;
      this.problems.microphone = describeMediaError(err, 'microphone');
      throw err;
    }
  }

  async refreshDevices() {
    try {
      this.devices = (await navigator.mediaDevices?.enumerateDevices?.()) ?? [];
    } catch {
      this.devices = [];
    }
    this.emit('devices', {});
  }

  /**
   * Devices of one kind, with a readable label (browsers hide labels until permission).
   * @param {MediaDeviceKind} kind
   */
  devicesOf(kind) {
    const list = this.devices.filter((d) => d.kind === kind && d.deviceId !== '');
    const noun = kind === 'videoinput' ? 'Camera' : kind === 'audioinput' ? 'Microphone' : 'Speaker';
    return list.map((d, i) => ({ id: d.deviceId, label: d.label || `${noun} ${i + 1}` }));
  }

  /** The id of the device a track comes from, for the pickers. */
  currentDevice(/** @type {'camera' | 'microphone'} */ which) {
    const track = which === 'camera' ? this.camera : this.microphone;
    return track?.getSettings().deviceId ?? (which === 'camera' ? this.cameraId : this.microphoneId);
  }

  /**
   * Turns the microphone on or off (the track keeps running, muted, so switching back is
   * instant). Returns false when there is no microphone.
   * @param {boolean} on
   */
  setMicOn(on) {
    this.micOn = on;
    if (this.microphone) this.microphone.enabled = on;
    return Boolean(this.microphone);
  }

  /**
   * Turns the camera on or off. Off releases the device (its light goes out); on opens it
   * again.
   * @param {boolean} on
   */
  async setCamOn(on) {
    this.camOn = on;
    if (!on) {
      this.camera?.stop();
      this.camera = null;
      this.cameraChanged();
      return true;
    }
    if (!this.camera) {
      /** @type {MediaStreamTrack | null} */
      let cam = null;
      try {
        cam = await this.openCamera();
      } catch {
        this.camOn = false;
        return false;
      }
      if (!cam) return false;
      if (!this.camOn) {
        // Turned off again while opening.
        cam.stop();
        this.camera = null;
        return false;
      }
      this.watchEnded(cam);
      this.cameraChanged();
      await this.refreshDevices();
    }
    return true;
  }

  /**
   * Switches to another camera, keeping it on or off.
   * @param {string} deviceId
   */
  async useCamera(deviceId) {
    this.cameraId = deviceId;
    remember(CAMERA_KEY, deviceId);
    if (!this.camOn) return;
    const old = this.camera;
    old?.stop();
    this.camera = null;
    try {
      await this.openCamera();
    } catch {
      // The problem is in `problems.camera`; the camera is off now.
    }
    if (this.camera) this.watchEnded(this.camera);
    this.cameraChanged();
  }

  /**
   * Switches to another microphone, keeping it muted or not.
   * @param {string} deviceId
   */
  async useMicrophone(deviceId) {
    this.microphoneId = deviceId;
    remember(MICROPHONE_KEY, deviceId);
    const old = this.microphone;
    old?.stop();
    this.microphone = null;
    /** @type {MediaStreamTrack | null} */
    let mic = null;
    try {
      mic = await this.openMicrophone();
    } catch {
      // Noted in `problems.microphone`.
    }
    if (mic) {
      mic.enabled = this.micOn;
      this.watchEnded(mic);
    }
    this.emit('change', { source: 'microphone', track: mic });
  }

  /** @param {string} deviceId */
  useSpeaker(deviceId) {
    this.speakerId = deviceId;
    remember(SPEAKER_KEY, deviceId);
    this.emit('speaker', { id: deviceId });
  }

  /**
   * Asks the browser for a screen (or window, or tab) with its sound where offered. Rejects
   * when the user cancels.
   */
  async shareScreen() {
    const md = navigator.mediaDevices;
    if (!md?.getDisplayMedia) throw new Error('This browser cannot share a screen.');
    const stream = await md.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: true });
    this.stopShare(false);
    const video = stream.getVideoTracks()[0] ?? null;
    if (video && 'contentHint' in video) video.contentHint = 'detail';
    this.setShare('screen', video, stream.getAudioTracks()[0] ?? null);
  }

  /**
   * Plays a local video file into the room as a share: a media element nobody sees plays it
   * (its sound comes out here too), and `captureStream` turns that into tracks.
   * @param {File} file
   */
  async shareFile(file) {
    const player = document.createElement('video');
    player.playsInline = true;
    player.loop = true;
    const url = URL.createObjectURL(file);
    player.src = url;
    try {
      await player.play().catch((err) => {
        // Without a recent click the browser may refuse sound: play muted here (the copy sent
        // to the room keeps its sound).
        if (err?.name !== 'NotAllowedError') throw err;
        player.muted = true;
        return player.play();
      });
    } catch (err) {
      URL.revokeObjectURL(url);
      throw new Error(`${file.name} cannot be played here: ${err instanceof Error ? err.message : err}`);
    }
    /** @type {any} */
    const el = player;
    const capture = el.captureStream ?? el.mozCaptureStream;
    if (typeof capture !== 'function') {
      player.pause();
      URL.revokeObjectURL(url);
      throw new Error('This browser cannot share a video file.');
    }
    /** @type {MediaStream} */
    const stream = capture.call(player);
    // A file's tracks can appear a moment after playback starts.
    if (stream.getVideoTracks().length === 0) {
      await new Promise((resolve) => {
        stream.addEventListener('addtrack', resolve, { once: true });
        setTimeout(resolve, 2_000);
      });
    }
    this.stopShare(false);
    this.filePlayer = player;
    this.fileUrl = url;
    this.setShare('file', stream.getVideoTracks()[0] ?? null, stream.getAudioTracks()[0] ?? null);
    player.addEventListener('error', () => this.stopShare(true), { once: true });
  }

  /**
   * @param {'screen' | 'file'} kind
   * @param {MediaStreamTrack | null} video
   * @param {MediaStreamTrack | null} audio
   */
  setShare(kind, video, audio) {
    this.sharing = video ? kind : null;
    this.screen = video;
    this.screenAudio = audio;
    for (const t of [video, audio]) t?.addEventListener('ended', () => this.stopShare(true), { once: true });
    this.emit('change', { source: 'screen', track: video });
    this.emit('change', { source: 'screen-audio', track: audio });
  }

  /**
   * Ends the share, if any.
   * @param {boolean} byItself  the browser or the file ended it (not the user's button)
   */
  stopShare(byItself = false) {
    if (!this.sharing && !this.screen) return;
    for (const t of [this.screen, this.screenAudio]) t?.stop();
    this.screen = null;
    this.screenAudio = null;
    this.sharing = null;
    if (this.filePlayer) {
      this.filePlayer.pause();
      this.filePlayer.removeAttribute('src');
      this.filePlayer = null;
    }
    if (this.fileUrl) URL.revokeObjectURL(this.fileUrl);
    this.fileUrl = null;
    this.emit('change', { source: 'screen', track: null });
    this.emit('change', { source: 'screen-audio', track: null });
    if (byItself) this.emit('share-ended', {});
  }

  /** Stops every track (leaving the meeting). */
  stopAll() {
    this.stopShare(false);
    this.effect?.stop();
    this.effect = null;
    this.effected = null;
    for (const t of [this.camera, this.microphone]) t?.stop();
    this.camera = null;
    this.microphone = null;
  }

  /**
   * A device unplugged mid-call ends its track: say so, so that the UI can offer another.
   * @param {MediaStreamTrack} track
   */
  watchEnded(track) {
    track.addEventListener(
      'ended',
      () => {
        console.info(`confab: ${track.kind} track ended by the browser`, track.label);
        if (track === this.camera) {
          this.camera = null;
          this.camOn = false;
          this.problems.camera = 'The camera stopped (unplugged?). Pick another in the settings.';
          this.cameraChanged();
        } else if (track === this.microphone) {
          this.microphone = null;
          this.problems.microphone = 'The microphone stopped (unplugged?). Pick another in the settings.';
          this.emit('change', { source: 'microphone', track: null });
        }
        this.refreshDevices();
      },
      { once: true },
    );
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * A black video track that stands in for a missing camera while a screen share is being
 * published (protocol.js, `ensureCameraListed`). It is repainted twice a second so that the
 * browser keeps sending frames; it stops itself with its track.
 * @returns {MediaStreamTrack | null}
 */
export function placeholderVideo() {
  const canvas = document.createElement('canvas');
  canvas.width = 160;
  canvas.height = 90;
  const ctx = canvas.getContext('2d');
  if (!ctx || typeof canvas.captureStream !== 'function') return null;
  const paint = () => {
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  };
  paint();
  const track = canvas.captureStream(2).getVideoTracks()[0] ?? null;
  if (!track) return null;
  const timer = setInterval(paint, 500);
  const stop = track.stop.bind(track);
  track.stop = () => {
    clearInterval(timer);
    stop();
  };
  return track;
}

/**
 * The loudness of an audio track, 0..1, sampled when asked (Web Audio; nothing runs between
 * calls except the browser's analyser).
 */
export class LevelMeter {
  /** @param {MediaStreamTrack} track */
  constructor(track) {
    this.track = track;
    /** @type {AudioContext | null} */
    this.ctx = null;
    /** @type {AnalyserNode | null} */
    this.analyser = null;
    /** @type {Float32Array<ArrayBuffer> | null} */
    this.buffer = null;
    try {
      const Ctx = window.AudioContext ?? /** @type {any} */ (window).webkitAudioContext;
      this.ctx = new Ctx();
      const source = this.ctx.createMediaStreamSource(new MediaStream([track]));
      this.analyser = this.ctx.createAnalyser();
      this.analyser.fftSize = 512;
      source.connect(this.analyser);
      this.buffer = new Float32Array(this.analyser.fftSize);
      // Autoplay rules may start the context suspended; the next click or key resumes it.
      if (this.ctx.state === 'suspended') {
        const resume = () => this.ctx?.resume().catch(() => {});
        document.addEventListener('pointerdown', resume, { once: true, capture: true });
        document.addEventListener('keydown', resume, { once: true, capture: true });
      }
    } catch (err) {
      console.info('confab: no level meter', err);
    }
  }

  /** The current level, 0..1 (RMS, scaled so that speech reaches the upper half). */
  level() {
    if (!this.analyser || !this.buffer || this.track.readyState === 'ended') return 0;
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (const v of this.buffer) sum += v * v;
    const rms = Math.sqrt(sum / this.buffer.length);
    return Math.min(1, rms * 4);
  }

  close() {
    this.ctx?.close().catch(() => {});
    this.ctx = null;
    this.analyser = null;
  }
}
