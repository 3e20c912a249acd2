// @ts-check
/**
 * Chromium for the browser tests: launch flags (fake camera and microphone, loopback WebRTC),
 * one context per person, bounded polling, and the diagnostics a failed run leaves in
 * artifacts/. The server side is in server.js.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { REPO_ROOT } from './server.js';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO_ROOT, 'tests/browser/artifacts');
/** Every wait in these tests gives up after this long. */
export const WAIT_MS = 30_000;
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  ...iceInterfaceArgs(),
];

/**
 * Which local interfaces Chromium gathers ICE candidates on. The server listens on loopback.
 * With a loopback and a network interface, Chromium checks both pairs, picks the loopback one
 * first and a few seconds later switches to the other (lower network cost); the server does
 * not follow such a switch (its ICE-lite side keeps expecting the first pair) and fails the
 * connection 10 s later. Until it does, a machine with a network interface offers Chromium
 * that interface only (its packets to 127.0.0.1 go over loopback all the same); one without
 * uses loopback. CONFAB_TEST_ALL_INTERFACES=1 restores gathering on every interface, which
 * reproduces the switch.
 */
function iceInterfaceArgs() {
  const external = Object.values(os.networkInterfaces())
    .flat()
    .some((i) => i && !i.internal && i.family === 'IPv4');
  if (process.env.CONFAB_TEST_ALL_INTERFACES === '1' || !external) {
    return ['--allow-loopback-in-peer-connection'];
  }
  return ['--force-webrtc-ip-handling-policy=default_public_interface_only'];
}

/** @typedef {{name: string, page: import('playwright-core').Page, console: string[]}} Person */

/**
 * The path of a file in artifacts/, which exists afterwards.
 * @param {string} file
 */
export function artifact(file) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, file);
}

/**
 * @param {string[]} [extraArgs]  more Chromium flags, e.g. `--use-file-for-fake-video-capture=…`
 */
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
    timeout: WAIT_MS,
  });
}

/**
 * How each of the page's peer connections reaches the server: the selected candidate pair's
 * local candidate (`protocol` udp/tcp, `candidateType`, `relayProtocol` for TURN) and its RTT.
 * @param {Person} person
 */
export function selectedPaths({ page }) {
  return page.evaluate(async () => {
    const c = /** @type {any} */ (window).confab;
    /** @param {RTCPeerConnection | null | undefined} pc */
    const path = async (pc) => {
      if (!pc) return null;
      /** @type {Map<string, any>} */
      const byId = new Map();
      (await pc.getStats()).forEach((s) => byId.set(s.id, s));
      const transport = [...byId.values()].find((s) => s.type === 'transport');
      const pair = byId.get(transport?.selectedCandidatePairId);
      const local = byId.get(pair?.localCandidateId);
      const remote = byId.get(pair?.remoteCandidateId);
      if (!pair || !local) return null;
      return {
        protocol: local.protocol,
        candidateType: local.candidateType,
        relayProtocol: local.relayProtocol ?? null,
        remote: remote ? `${remote.protocol} ${remote.address}:${remote.port} ${remote.candidateType}` : null,
        rttMs: typeof pair.currentRoundTripTime === 'number' ? pair.currentRoundTripTime * 1000 : null,
      };
    };
    return { publish: await path(c?.publishPc), subscribe: await path(c?.subscribePc) };
  });
}

/**
 * A page in a context of its own (separate storage and media devices, like a separate
 * person) that records its console, opened at `url`.
 * @param {import('playwright-core').Browser} browser
 * @param {string} name
 * @param {string} url
 * @param {Array<() => void>} [initScripts]  run before the page's own scripts
 * @param {{viewport?: {width: number, height: number}, isMobile?: boolean, hasTouch?: boolean, ignoreHTTPSErrors?: boolean}} [device]
 *   the window (default 1000×700 desktop); a phone is e.g. 390×844 with isMobile and hasTouch;
 *   `ignoreHTTPSErrors` for a server with a self-signed certificate
 * @returns {Promise<Person>}
 */
export async function openPerson(browser, name, url, initScripts = [], device = {}) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 }, ...device });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  /** @type {string[]} */
  const lines = [];
  const at = () => new Date().toISOString().slice(11, 23);
  page.on('console', (m) => lines.push(`${at()} ${m.type()}: ${m.text()}`));
  page.on('pageerror', (err) => lines.push(`${at()} pageerror: ${err.stack ?? err}`));
  for (const script of initScripts) await page.addInitScript(script);
  const response = await page.goto(url);
  if (response?.status() !== 200) throw new Error(`GET ${url}: ${response?.status()}`);
  return { name, page, console: lines };
}

/**
 * The participant id of the page once it is in the room.
 * @param {Person} person
 * @returns {Promise<string>}
 */
export function participantId({ name, page }) {
  return waitFor(`${name} to be in the room`, async () => {
    const value = await page.evaluate(() => /** @type {any} */ (window).confab?.id ?? null);
    return { ok: value !== null, value };
  });
}

/**
 * Everyone in `people` types their name and joins, in turn; returns their participant ids once
 * each is in the room, in the same order.
 * @param {Person[]} people
 * @returns {Promise<string[]>}
 */
export async function joinAll(people) {
  for (const p of people) {
    await p.page.getByLabel('Your name').fill(p.name);
    await p.page.getByRole('button', { name: 'Join' }).click();
  }
  const ids = [];
  for (const p of people) ids.push(await participantId(p));
  return ids;
}

/**
 * Participant `id`'s tile on `person`'s page: whether it is there, its label, the muted
 * indicator, and how far its video has played.
 * @param {Person} person
 * @param {string} id
 */
export function tileState({ page }, id) {
  return page.evaluate((id) => {
    const tile = document.querySelector(`[data-participant="${CSS.escape(id)}"]`);
    const video = tile?.querySelector('video');
    return {
      present: Boolean(tile),
      label: tile?.querySelector('.label')?.textContent ?? null,
      micOff: tile?.querySelector('[aria-label="Microphone off"]')?.checkVisibility() ?? false,
      width: video?.videoWidth ?? 0,
      currentTime: video?.currentTime ?? 0,
    };
  }, id);
}

/**
 * Waits until `person` plays `id`'s video and it advances.
 * @param {Person} person
 * @param {string} id
 */
export async function videoPlays(person, id) {
  const first = await waitFor(`${person.name} to play ${id}'s video`, async () => {
    const s = await tileState(person, id);
    return { ok: s.width > 0 && s.currentTime > 0, value: s };
  });
  await waitFor(`${id}'s video to advance at ${person.name}`, async () => {
    const s = await tileState(person, id);
    return { ok: s.currentTime > first.currentTime + 0.2, value: { first, now: s } };
  });
}

/**
 * Polls `check` until it says ok; throws with the last observed value after WAIT_MS.
 * @template T
 * @param {string} what
 * @param {() => Promise<{ok: boolean, value: T}>} check
 * @returns {Promise<T>}
 */
export async function waitFor(what, check) {
  const deadline = Date.now() + WAIT_MS;
  /** @type {T | undefined} */
  let last;
  for (;;) {
    const { ok, value } = await check();
    if (ok) return value;
    last = value;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}; last seen: ${JSON.stringify(last, null, 1)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Writes what a page knows to artifacts/: console log, SDPs, connection states, screenshot,
 * each file named after `label`.
 * @param {Person} person
 * @param {string} label
 */
export async function saveDiagnostics({ page, console: lines }, label) {
  writeFileSync(artifact(`page-${label}.log`), lines.join('\n') + '\n');
  const state = await page
    .evaluate(() => {
      const c = /** @type {any} */ (window).confab;
      /** @param {RTCPeerConnection | null | undefined} pc */
      const describe = (pc) =>
        pc && {
          connectionState: pc.connectionState,
          iceConnectionState: pc.iceConnectionState,
          signalingState: pc.signalingState,
          local: pc.localDescription?.sdp,
          remote: pc.remoteDescription?.sdp,
        };
      return { id: c?.id, publish: describe(c?.publishPc), subscribe: describe(c?.subscribePc) };
    })
    .catch((err) => ({ error: String(err) }));
  writeFileSync(artifact(`state-${label}.json`), JSON.stringify(state, null, 2));
  await page
    .screenshot({ path: artifact(`last-${label}.png`), timeout: 5_000 })
    .catch(() => {});
}

/**
 * Closes the browser, giving up after 10 s (a wedged Chromium must not hang the run).
 * @param {import('playwright-core').Browser | null} browser
 */
export async function closeBrowser(browser) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  await Promise.race([
    browser?.close().catch(() => {}),
    new Promise((r) => {
      timer = setTimeout(r, 10_000);
    }),
  ]);
  clearTimeout(timer);
}
