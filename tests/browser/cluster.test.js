// @ts-check
/**
 * Cluster mode in Chromium: two confab nodes share a throwaway redis-server; Alice opens the
 * room on one node's URL, Bob on the other's. Bob's page is redirected to the room's node
 * and reconnects there by itself; each page then plays the other's video, and a file Bob
 * shares (uploaded to the room's node, across origins) reaches both.
 *
 * Needs redis-server (scripts/setup.sh installs it), the server binary (CONFAB_BIN) and
 * Chromium (CHROMIUM_BIN).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  artifact,
  closeBrowser,
  launchChromium,
  openPerson,
  participantId,
  saveDiagnostics,
  videoPlays,
  waitFor,
} from './browser.js';
import { freePort, startServer } from './server.js';

const SECRET = 'browser cluster secret, shared by both nodes';

/**
 * A redis-server on a free loopback port, without persistence, in `dir`; resolves once it
 * answers PING.
 * @param {string} dir
 */
async function startRedis(dir) {
  const port = await freePort();
  const proc = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' },
  );
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  proc.on('error', () => {});
  const ping = () =>
    new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
      s.on('data', (d) => {
        resolve(String(d).startsWith('+PONG'));
        s.destroy();
      });
      s.on('error', () => resolve(false));
    });
  await waitFor('redis-server to answer PING (installed? run scripts/setup.sh)', async () => {
    if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}`);
    return { ok: Boolean(await ping()), value: port };
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      proc.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * Starts `count` nodes on `redisUrl` into `nodes` (so that a failure midway still stops the
 * ones started), each with its data under `dir`, and waits until every node lists them all.
 * @param {Array<Awaited<ReturnType<typeof startServer>>>} nodes
 * @param {number} count
 * @param {string} redisUrl
 * @param {string} dir
 * @param {string} label  names the log files
 */
async function startNodes(nodes, count, redisUrl, dir, label) {
  for (let i = 0; i < count; i++) {
    nodes.push(
      await startServer({
        dataDir: path.join(dir, `node${i}`),
        logFile: artifact(`${label}-node${i}.log`),
        args: ['--redis', redisUrl, '--node-url', 'http://127.0.0.1:0', '--cluster-secret', SECRET],
      }),
    );
  }
  for (const node of nodes) {
    await waitFor(`${node.url} to list all ${count} nodes`, async () => {
      const table = await (await fetch(`${node.url}/api/cluster`)).json();
      return { ok: table.nodes.length === count, value: table };
    });
  }
}

test('two pages opening one room on two nodes meet', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'confab-browser-cluster-'));
  const redis = await startRedis(dir);
  /** @type {Array<Awaited<ReturnType<typeof startServer>>>} */
  const nodes = [];
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person[]} */
  const people = [];
  let failed = true;
  try {
    // Each node knows the other before pages load (their policy names the nodes' origins).
    await startNodes(nodes, 2, redis.url, dir, 'cluster');
    browser = await launchChromium();
    const room = `c-${Math.random().toString(36).slice(2, 10)}`;
    const [a, b] = nodes;
    people.push(await openPerson(browser, 'Alice', `${a.url}/r/${room}`));
    people.push(await openPerson(browser, 'Bob', `${b.url}/r/${room}`));
    for (const { name, page } of people) {
      await page.getByLabel('Your name').fill(name);
      await page.waitForFunction(
        () => /** @type {HTMLVideoElement | null} */ (document.querySelector('video'))?.videoWidth,
        null,
      );
    }
    // Alice first: the room is placed on her node (both are idle; the node asked wins ties).
    await people[0].page.getByRole('button', { name: 'Join' }).click();
    const alice = await participantId(people[0]);
    await people[1].page.getByRole('button', { name: 'Join' }).click();
    const bob = await participantId(people[1]);

    // Bob's page signals with Alice's node now, without a reload.
    const bobUrl = await people[1].page.evaluate(() => /** @type {any} */ (window).confab?.url);
    assert.equal(bobUrl, `${a.url.replace('http:', 'ws:')}/ws`, "Bob's page should have followed the redirect");
    assert.equal(people[1].page.url(), `${b.url}/r/${room}`, "Bob's page itself stays on its node");

    await videoPlays(people[0], bob);
    await videoPlays(people[1], alice);

    // Bob's uploads go to the room's node too: another origin than his page's (CORS and the
    // page's connect-src allow the cluster's nodes).
    await people[1].page.locator('#chat-file').setInputFiles({
      name: 'notes.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from('uploaded across nodes\n'),
    });
    for (const { page } of people) {
      await page.getByRole('log').getByRole('link', { name: /notes\.txt/ }).waitFor();
    }
    await people[1].page.screenshot({ path: artifact('cluster.png') });
    failed = false;
  } finally {
    if (failed) {
      for (const p of people) await saveDiagnostics(p, `cluster-${p.name}`);
      for (const n of nodes) console.log(n.tail());
    }
    await closeBrowser(browser);
    for (const n of nodes) await n.stop();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('when the room\'s node is killed, both pages meet again on another node by themselves', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'confab-browser-failover-'));
  const redis = await startRedis(dir);
  /** @type {Array<Awaited<ReturnType<typeof startServer>>>} */
  const nodes = [];
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {import('./browser.js').Person[]} */
  const people = [];
  let failed = true;
  try {
    await startNodes(nodes, 3, redis.url, dir, 'failover');
    browser = await launchChromium();
    const room = `f-${Math.random().toString(36).slice(2, 10)}`;
    // Alice's page is on node 2, which will die with the room; Bob's page on node 0 survives.
    people.push(await openPerson(browser, 'Alice', `${nodes[2].url}/r/${room}`));
    people.push(await openPerson(browser, 'Bob', `${nodes[0].url}/r/${room}`));
    for (const { name, page } of people) {
      await page.getByLabel('Your name').fill(name);
      await page.waitForFunction(
        () => /** @type {HTMLVideoElement | null} */ (document.querySelector('video'))?.videoWidth,
        null,
      );
    }
    await people[0].page.getByRole('button', { name: 'Join' }).click();
    const alice = await participantId(people[0]);
    await people[1].page.getByRole('button', { name: 'Join' }).click();
    const bob = await participantId(people[1]);
    await videoPlays(people[0], bob);
    await videoPlays(people[1], alice);
    // Node 0 lists the room on node 2 once node 2's heartbeat says so (≤ 2 s).
    await waitFor('the room to be listed on node 2', async () => {
      const rooms = await (await fetch(`${nodes[0].url}/api/rooms`)).json();
      const listed = rooms.find((/** @type {{name: string}} */ r) => r.name === room);
      return { ok: listed?.node === nodes[2].url, value: rooms };
    });

    await nodes[2].kill();
    const killed = Date.now();
    // Each page notices, rejoins through a live node (Alice's own node is gone: she uses the
    // list `joined` gave her) and sees the other's video play again.
    const back = async (/** @type {import('./browser.js').Person} */ person) => {
      await waitFor(`${person.name}'s page to rejoin on a live node`, async () => {
        const value = await person.page.evaluate(() => {
          const c = /** @type {any} */ (window).confab;
          return { url: c?.url ?? null, id: c?.id ?? null, closed: Boolean(c?.closed) };
        });
        const live = typeof value.url === 'string' && !value.url.includes(new URL(nodes[2].url).host);
        return { ok: live && value.id !== null && !value.closed, value };
      });
    };
    await Promise.all([back(people[0]), back(people[1])]);
    const ids = await Promise.all(people.map((p) => participantId(p)));
    await Promise.all([videoPlays(people[0], ids[1]), videoPlays(people[1], ids[0])]);
    const took = Date.now() - killed;
    console.log(`failover in Chromium: both pages play each other again ${took} ms after kill -9`);
    assert.ok(took < 10_000, `the pages met again only after ${took} ms`);
    await people[1].page.screenshot({ path: artifact('failover.png') });
    failed = false;
  } finally {
    if (failed) {
      for (const p of people) await saveDiagnostics(p, `failover-${p.name}`);
      for (const n of nodes) console.log(n.tail());
    }
    await closeBrowser(browser);
    for (const n of nodes) await n.stop();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
