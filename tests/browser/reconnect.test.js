// @ts-check
/**
 * Resilience of the meeting page against a real confab server: the server is stopped (it
 * closes every WebSocket with a goodbye) and started again on the same ports and data
 * directory; both pages show "Reconnecting…", join again by themselves with the same name,
 * microphone state and media, without a page reload, and video flows again. Then the server
 * stays down: the pages give up with a clear message and a Try again button, which brings
 * them back once the server is up again.
 *
 * Needs the server binary (CONFAB_BIN) and Chromium (CHROMIUM_BIN). Artifacts go to
 * tests/browser/artifacts/reconnect-*.
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
  tileState,
  videoPlays,
  waitFor,
} from './browser.js';
import { startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

/** How long the page keeps trying before it gives up (web/session.js GIVE_UP_AFTER_MS) plus slack. */
const GIVE_UP_WAIT_MS = 75_000;

/**
 * The banner's text while it is shown, else null.
 * @param {Person} person
 */
function banner({ page }) {
  return page.evaluate(() => {
    const el = document.getElementById('banner');
    return el && !el.hidden ? el.textContent : null;
  });
}

test('server restart: automatic rejoin with the same name and media; server gone: message and Try again', { timeout: 300_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-reconnect-'));
  let server = await startServer({ dataDir, logFile: artifact('reconnect-server-1.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium();
    const room = `re-${Math.random().toString(36).slice(2, 10)}`;
    const alice = await openPerson(browser, 'Alice', `${server.url}/r/${room}`);
    const bob = await openPerson(browser, 'Bob', `${server.url}/r/${room}`);
    people.push(alice, bob);
    const [aliceId, bobId] = await joinAll(people);
    await videoPlays(alice, bobId);
    await videoPlays(bob, aliceId);
    // Bob is muted before the drop; he must come back muted.
    await bob.page.getByRole('button', { name: 'Microphone', exact: true }).click();
    await waitFor("Alice to see Bob's muted indicator", async () => {
      const s = await tileState(alice, bobId);
      return { ok: s.micOff, value: s };
    });
    // Marks that would not survive a page reload.
    for (const p of people) await p.page.evaluate(() => (/** @type {any} */ (window).__sameDocument = true));

    // The server goes away and comes back on the same ports with the same data.
    const listen = server.addresses();
    t.diagnostic(`restarting the server on ${JSON.stringify(listen)}`);
    const exit = await server.stop();
    t.diagnostic(`server exit: ${exit}`);
    for (const p of people) {
      await waitFor(`${p.name} to say Reconnecting…`, async () => {
        const text = await banner(p);
        return { ok: text === 'Reconnecting…', value: text };
      });
    }
    await alice.page.screenshot({ path: artifact('reconnect-banner.png') });
    const downAt = Date.now();
    server = await startServer({ dataDir, logFile: artifact('reconnect-server-2.log'), listen });
    for (const p of people) {
      await waitFor(`${p.name} to be back in the room`, async () => {
        const text = await banner(p);
        const state = await p.page.evaluate(() => /** @type {any} */ (window).confab?.subscribePc?.connectionState ?? null);
        return { ok: text === null && state === 'connected', value: { banner: text, state } };
      });
    }
    t.diagnostic(`both back ${Date.now() - downAt} ms after the server was started again`);
    const aliceId2 = await participantId(alice);
    const bobId2 = await participantId(bob);
    await videoPlays(alice, bobId2);
    await videoPlays(bob, aliceId2);
    const bobAtAlice = await tileState(alice, bobId2);
    assert.equal(bobAtAlice.label, 'Bob', 'the same name');
    assert.equal(bobAtAlice.micOff, true, 'still muted');
    assert.equal(
      await bob.page.getByRole('button', { name: 'Microphone', exact: true }).getAttribute('aria-pressed'),
      'false',
    );
    for (const p of people) {
      assert.equal(await p.page.evaluate(() => /** @type {any} */ (window).__sameDocument), true, `${p.name} did not reload`);
      assert.equal(await p.page.locator('[data-participant]').count(), 2, `${p.name} shows two tiles, no leftovers`);
    }

    // The server goes away for good: the pages give up with a message and a retry button.
    const listen2 = server.addresses();
    await server.stop();
    const stoppedAt = Date.now();
    for (const p of people) {
      const retry = p.page.getByRole('button', { name: 'Try again' });
      await retry.waitFor({ timeout: GIVE_UP_WAIT_MS - (Date.now() - stoppedAt) });
      assert.match((await p.page.locator('#ended').textContent()) ?? '', /Cannot reach the server/);
    }
    t.diagnostic(`gave up ${Date.now() - stoppedAt} ms after the server stopped`);
    await alice.page.screenshot({ path: artifact('reconnect-gave-up.png') });

    // Back up: Try again brings both into the room again.
    server = await startServer({ dataDir, logFile: artifact('reconnect-server-3.log'), listen: listen2 });
    for (const p of people) await p.page.getByRole('button', { name: 'Try again' }).click();
    const aliceId3 = await participantId(alice);
    const bobId3 = await participantId(bob);
    await waitFor('both to be in the room again', async () => {
      const ids = await Promise.all(people.map((p) => p.page.evaluate(() => /** @type {any} */ (window).confab?.id ?? null)));
      const banners = await Promise.all(people.map((p) => banner(p)));
      return { ok: ids.every((id) => id !== null) && banners.every((b) => b === null), value: { ids, banners } };
    });
    await videoPlays(alice, (await participantId(bob)) ?? bobId3);
    await videoPlays(bob, (await participantId(alice)) ?? aliceId3);
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, `reconnect-${person.name}`);
    await closeBrowser(browser);
    await server.stop();
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('the network goes away and comes back: the page joins again at once, without a reload', { timeout: 180_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-offline-'));
  const server = await startServer({ dataDir, logFile: artifact('reconnect-offline-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium();
    const room = `off-${Math.random().toString(36).slice(2, 10)}`;
    const alice = await openPerson(browser, 'Alice', `${server.url}/r/${room}`);
    const bob = await openPerson(browser, 'Bob', `${server.url}/r/${room}`);
    people.push(alice, bob);
    const [aliceId, firstBobId] = await joinAll(people);
    await videoPlays(bob, aliceId);
    await videoPlays(alice, firstBobId);
    // Marks on the document and on the current connection.
    await bob.page.evaluate(() => {
      const w = /** @type {any} */ (window);
      w.__sameDocument = true;
      w.confab.__before = true;
    });

    const context = bob.page.context();
    await context.setOffline(true);
    const offline = await waitFor('Bob to notice he is offline', async () => {
      const text = await banner(bob);
      return { ok: text !== null, value: text };
    });
    t.diagnostic(`offline banner: ${offline}`);
    await context.setOffline(false);
    await waitFor('Bob to be back on a new connection', async () => {
      const s = await bob.page.evaluate(() => {
        const c = /** @type {any} */ (window).confab;
        return { fresh: c?.__before !== true, id: c?.id ?? null, state: c?.subscribePc?.connectionState ?? null };
      });
      const text = await banner(bob);
      return { ok: s.fresh && s.id !== null && s.state === 'connected' && text === null, value: { ...s, banner: text } };
    });
    const bobId = await participantId(bob);
    await videoPlays(alice, bobId);
    await videoPlays(bob, aliceId);
    assert.equal(await bob.page.evaluate(() => /** @type {any} */ (window).__sameDocument), true, 'no reload');
    assert.equal((await tileState(alice, bobId)).label, 'Bob');
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, `reconnect-offline-${person.name}`);
    await closeBrowser(browser);
    await server.stop();
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});
