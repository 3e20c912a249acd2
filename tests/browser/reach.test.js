// @ts-check
/**
 * Reachability where UDP is blocked. A Chromium whose WebRTC may not use UDP at all
 * (`--webrtc-ip-handling-policy=disable_non_proxied_udp`, what a browser behind a UDP-blocking
 * firewall or a TCP-only proxy ends up with) meets an ordinary page in one room, against a
 * server with its default flags: both see and hear each other, and the restricted page's
 * selected candidate pairs are TCP (ICE-TCP to the media port's TCP listener).
 *
 * Needs the server binary (CONFAB_BIN) and Chromium (CHROMIUM_BIN). Artifacts go to
 * tests/browser/artifacts/reach-*.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  artifact,
  closeBrowser,
  joinAll,
  launchChromium,
  openPerson,
  participantId,
  saveDiagnostics,
  selectedPaths,
  videoPlays,
  waitFor,
} from './browser.js';
import { startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

/**
 * Waits until `person` receives audio from someone: inbound audio packets keep arriving.
 * @param {Person} person
 */
async function hearsAudio(person) {
  /** @returns {Promise<number>} */
  const packets = () =>
    person.page.evaluate(async () => {
      const pc = /** @type {any} */ (window).confab?.subscribePc;
      let n = 0;
      if (pc) (await pc.getStats()).forEach((/** @type {any} */ s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') n += s.packetsReceived ?? 0;
      });
      return n;
    });
  const first = await waitFor(`${person.name} to receive audio`, async () => {
    const n = await packets();
    return { ok: n > 0, value: n };
  });
  await waitFor(`${person.name}'s audio to keep coming`, async () => {
    const n = await packets();
    return { ok: n > first + 20, value: { first, now: n } };
  });
}

test('a browser that may not use UDP meets over ICE-TCP with the default server flags', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-reach-'));
  const server = await startServer({ dataDir, logFile: artifact('reach-tcp-server.log') });
  /** @type {import('playwright-core').Browser[]} */
  const browsers = [];
  /** @type {Person[]} */
  const people = [];
  let failed = true;
  try {
    const open = await launchChromium();
    const restricted = await launchChromium(['--webrtc-ip-handling-policy=disable_non_proxied_udp']);
    browsers.push(open, restricted);
    const room = `tcp-${Math.random().toString(36).slice(2, 10)}`;
    const ann = await openPerson(open, 'Ann', `${server.url}/r/${room}`);
    const tom = await openPerson(restricted, 'Tom', `${server.url}/r/${room}`);
    people.push(ann, tom);
    const [annId, tomId] = await joinAll(people);
    await videoPlays(ann, tomId);
    await videoPlays(tom, annId);
    await hearsAudio(ann);
    await hearsAudio(tom);
    const tomPaths = await selectedPaths(tom);
    const annPaths = await selectedPaths(ann);
    t.diagnostic(`Tom (no UDP): ${JSON.stringify(tomPaths)}`);
    t.diagnostic(`Ann: ${JSON.stringify(annPaths)}`);
    assert.equal(tomPaths.publish?.protocol, 'tcp', 'the restricted page publishes over TCP');
    assert.equal(tomPaths.subscribe?.protocol, 'tcp', 'the restricted page receives over TCP');
    assert.equal(annPaths.subscribe?.protocol, 'udp', 'the ordinary page keeps UDP');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /confab_connected_peer_connections\{transport="tcp"\} 2/);
    assert.match(metrics, /confab_connected_peer_connections\{transport="udp"\} 2/);
    assert.match(server.tail(), /media connected only by ICE-TCP/);
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, `reach-${person.name}`);
    for (const b of browsers) await closeBrowser(b);
    await server.stop();
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

/**
 * Between the pages and the server's media port: the server announces 127.0.0.2 (`--public-ip`)
 * and this proxy forwards UDP and TCP from there to the real port on 127.0.0.1, until
 * `cutUdp()`: from then on every UDP datagram is dropped, as on a network that starts blocking
 * UDP (a move to another Wi-Fi), while TCP keeps working.
 * @param {number} port  the server's media port (UDP and ICE-TCP)
 */
async function mediaProxy(port) {
  const dgram = await import('node:dgram');
  const net = await import('node:net');
  const front = '127.0.0.2';
  let udpOpen = true;
  /** @type {Map<string, import('node:dgram').Socket>} */
  const upstream = new Map();
  const udp = dgram.createSocket('udp4');
  udp.on('message', (msg, from) => {
    if (!udpOpen) return;
    const key = `${from.address}:${from.port}`;
    let up = upstream.get(key);
    if (!up) {
      const s = dgram.createSocket('udp4');
      s.on('message', (reply) => {
        if (udpOpen) udp.send(reply, from.port, from.address);
      });
      s.bind(0, '127.0.0.1');
      upstream.set(key, s);
      up = s;
    }
    up.send(msg, port, '127.0.0.1');
  });
  await new Promise((resolve) => udp.bind(port, front, () => resolve(undefined)));
  /** @type {Set<import('node:net').Socket>} */
  const sockets = new Set();
  const tcp = net.createServer((client) => {
    const server = net.connect(port, '127.0.0.1');
    for (const s of [client, server]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(server);
    server.pipe(client);
    client.on('close', () => server.destroy());
    server.on('close', () => client.destroy());
  });
  await new Promise((resolve) => tcp.listen(port, front, () => resolve(undefined)));
  return {
    front,
    cutUdp() {
      udpOpen = false;
    },
    close() {
      udp.close();
      for (const s of upstream.values()) s.close();
      for (const s of sockets) s.destroy();
      tcp.close();
    },
  };
}

/**
 * The chat history of `room` (system notices included), oldest first.
 * @param {string} base  the server's URL
 * @param {string} room
 * @returns {Promise<Array<{text: string, kind: string}>>}
 */
async function history(base, room) {
  const r = await fetch(`${base}/api/rooms/${room}/messages?limit=500`);
  return r.ok ? r.json() : [];
}

test('UDP stops getting through mid-meeting: an ICE restart moves media to TCP within seconds, without a rejoin', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-reach-'));
  // A fixed free port for UDP and TCP, which the proxy mirrors on 127.0.0.2.
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const server = await startServer({
    dataDir,
    logFile: artifact('reach-cut-server.log'),
    listen: { media: `127.0.0.1:${port}` },
    args: ['--public-ip', '127.0.0.2'],
  });
  const proxy = await mediaProxy(port);
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium();
    const room = `cut-${Math.random().toString(36).slice(2, 10)}`;
    const ann = await openPerson(browser, 'Ann', `${server.url}/r/${room}`);
    const bob = await openPerson(browser, 'Bob', `${server.url}/r/${room}`);
    people.push(ann, bob);
    const [annId, bobId] = await joinAll(people);
    await videoPlays(ann, bobId);
    await videoPlays(bob, annId);
    const before = await selectedPaths(bob);
    t.diagnostic(`before: ${JSON.stringify(before)}`);
    assert.equal(before.subscribe?.protocol, 'udp');
    for (const p of people) await p.page.evaluate(() => (/** @type {any} */ (window).confab.__before = true));

    proxy.cutUdp();
    const cutAt = Date.now();
    t.diagnostic(`UDP cut at ${new Date(cutAt).toISOString()}`);
    /** @param {Person} p @param {string} from */
    const frames = (p, from) =>
      p.page.evaluate((id) => {
        const v = document.querySelector(`[data-participant="${CSS.escape(id)}"] video`);
        return v instanceof HTMLVideoElement ? v.currentTime : 0;
      }, from);
    // Media is back when both pages play the other's video again over TCP.
    for (const [p, from] of /** @type {const} */ ([[ann, bobId], [bob, annId]])) {
      await waitFor(`${p.name}'s media to come back over TCP`, async () => {
        const paths = await selectedPaths(p);
        const tcp = paths.publish?.protocol === 'tcp' && paths.subscribe?.protocol === 'tcp';
        const a = await frames(p, from);
        await new Promise((r) => setTimeout(r, 150));
        const b = await frames(p, from);
        return { ok: tcp && b > a, value: { paths, advancing: b > a } };
      });
      t.diagnostic(`${p.name} plays video over TCP again ${Date.now() - cutAt} ms after the cut`);
    }
    const backMs = Date.now() - cutAt;
    t.diagnostic(`UDP cut: media back over TCP on both pages after ${backMs} ms`);
    for (const p of people) {
      const same = await p.page.evaluate(() => /** @type {any} */ (window).confab?.__before === true);
      assert.ok(same, `${p.name} kept its connection (an ICE restart, not a rejoin)`);
    }
    assert.equal(await participantId(bob), bobId, 'the same participant');
    const notices = (await history(server.url, room)).filter((m) => m.kind === 'system').map((m) => m.text);
    assert.deepEqual(notices, ['Ann joined', 'Bob joined'], 'no leave and join again in the history');
    assert.ok(backMs < 5_000, `media came back after ${backMs} ms (the goal is 5 s)`);
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, `reach-cut-${person.name}`);
    await closeBrowser(browser);
    proxy.close();
    await server.stop();
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('no path for media at all: the page says the network blocks it, without a rejoin loop', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-reach-'));
  // No ICE-TCP, and a page that may not use UDP: nothing gets through.
  const server = await startServer({ dataDir, logFile: artifact('reach-blocked-server.log'), args: ['--media-tcp', 'off'] });
  /** @type {import('playwright-core').Browser[]} */
  const browsers = [];
  /** @type {Person[]} */
  const people = [];
  let failed = true;
  try {
    const open = await launchChromium();
    const restricted = await launchChromium(['--webrtc-ip-handling-policy=disable_non_proxied_udp']);
    browsers.push(open, restricted);
    const room = `blocked-${Math.random().toString(36).slice(2, 10)}`;
    const ann = await openPerson(open, 'Ann', `${server.url}/r/${room}`);
    const tom = await openPerson(restricted, 'Tom', `${server.url}/r/${room}`);
    people.push(ann, tom);
    await joinAll(people);
    const startedAt = Date.now();
    const heading = tom.page.getByRole('heading', { name: /network seems to block the media connection/i });
    await heading.waitFor({ timeout: 60_000 });
    t.diagnostic(`the message after ${Date.now() - startedAt} ms: ${await tom.page.locator('#ended').innerText()}`);
    assert.ok(await tom.page.getByRole('button', { name: 'Try again' }).isVisible());
    // No loop: it stays out, and the room's history has one join and one leave of Tom's.
    await new Promise((r) => setTimeout(r, 8_000));
    const notices = (await history(server.url, room)).filter((m) => m.kind === 'system').map((m) => m.text);
    t.diagnostic(`history: ${JSON.stringify(notices)}`);
    assert.equal(notices.filter((n) => n === 'Tom joined').length, 1, 'Tom joined once');
    assert.ok(notices.filter((n) => n === 'Tom left').length <= 1, 'and left at most once');
    const blocked = tom.console.filter((l) => /server error internal/.test(l));
    assert.deepEqual(blocked, [], 'no "internal" errors');
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, `reach-blocked-${person.name}`);
    for (const b of browsers) await closeBrowser(b);
    await server.stop();
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

/**
 * Injected into a page: its peer connections may use only TURN relays, and only over TLS
 * (the server's `turns:` URL).
 */
function relayOverTlsOnly() {
  const Native = window.RTCPeerConnection;
  /** @param {RTCConfiguration} [config] */
  function Forced(config = {}) {
    const iceServers = (config.iceServers ?? [])
      .map((s) => ({ ...s, urls: [s.urls].flat().filter((u) => u.startsWith('turns:')) }))
      .filter((s) => s.urls.length > 0);
    return new Native({ ...config, iceServers, iceTransportPolicy: 'relay' });
  }
  Forced.prototype = Native.prototype;
  /** @type {any} */ (window).RTCPeerConnection = Forced;
}

test('with --turn, a page forced to relay gets media through TURN over TLS', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-reach-'));
  const server = await startServer({
    dataDir,
    logFile: artifact('reach-turn-server.log'),
    args: ['--tls-self-signed', '--turn', '--turn-listen', '127.0.0.1:0', '--turn-tls', '127.0.0.1:0'],
  });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium(['--ignore-certificate-errors']);
    const room = `turn-${Math.random().toString(36).slice(2, 10)}`;
    const device = { ignoreHTTPSErrors: true };
    const ann = await openPerson(browser, 'Ann', `${server.url}/r/${room}`, [], device);
    const rex = await openPerson(browser, 'Rex', `${server.url}/r/${room}`, [relayOverTlsOnly], device);
    people.push(ann, rex);
    const [annId, rexId] = await joinAll(people);
    await videoPlays(ann, rexId);
    await videoPlays(rex, annId);
    await hearsAudio(ann);
    await hearsAudio(rex);
    const paths = await selectedPaths(rex);
    t.diagnostic(`Rex (relay only): ${JSON.stringify(paths)}`);
    for (const role of /** @type {const} */ (['publish', 'subscribe'])) {
      assert.equal(paths[role]?.candidateType, 'relay', `${role} through the relay`);
      assert.equal(paths[role]?.relayProtocol, 'tls', `${role} reaches the relay over TLS`);
    }
    // Over HTTPS with a self-signed certificate: fetched by the page, which accepts it.
    const metrics = await ann.page.evaluate(async () => (await fetch('/metrics')).text());
    assert.match(metrics, /confab_turn_allocations\{transport="tls"\} [1-9]/);
    assert.match(metrics, /confab_connected_peer_connections\{transport="relay"\} 2/);
    assert.match(server.tail(), /media connected only through TURN/);
    // The tile's connection detail names the transport.
    await waitFor("Rex's own tile to say it goes through TURN over TLS", async () => {
      const text = await rex.page.evaluate((id) => {
        const d = document.querySelector(`[data-participant="${CSS.escape(id)}"] .quality-detail`);
        return d?.textContent ?? '';
      }, rexId);
      return { ok: /TURN-TLS/.test(text), value: text };
    });
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, `reach-turn-${person.name}`);
    await closeBrowser(browser);
    await server.stop();
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});
