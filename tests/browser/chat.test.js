// @ts-check
/**
 * The chat of the meeting page, through its UI against a real confab server with three
 * Chromium pages: a message goes from pending to sent and reaches the others with its
 * sender's name; a private message reaches only its recipient; an image arrives as an inline
 * preview, a dropped text file as a download link; HTML in messages stays text; Shift+Enter makes a new line; the unread badge counts
 * while the panel is closed; a reloaded page shows the earlier messages from history, its
 * own private one included; a message whose ack was lost is resent after a reload and
 * delivered once; and beyond the last 100, "Load older" brings the rest.
 *
 * Needs the server binary (CONFAB_BIN, default target/debug/confab) and Chromium
 * (CHROMIUM_BIN, default /usr/bin/chromium). Artifacts go to tests/browser/artifacts/chat-*.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { deflateSync } from 'node:zlib';
import {
  artifact,
  closeBrowser,
  launchChromium,
  openPerson,
  participantId,
  saveDiagnostics,
  waitFor,
} from './browser.js';
import { startServer } from './server.js';

/** @typedef {import('./browser.js').Person} Person */

const XSS_IMG = '<img src=x onerror="window.__xss=1">';
const XSS_SCRIPT = '<script>window.__xss=2</script>';

/**
 * Injected before the page's scripts: remembers the client_id of every message that was ever
 * shown as pending, so the test can tell pending → sent happened.
 */
function pendingProbe() {
  /** @type {string[]} */
  const seen = [];
  /** @type {any} */ (window).__pendingSeen = seen;
  /** @param {Node} node */
  const look = (node) => {
    if (!(node instanceof HTMLElement)) return;
    for (const el of [node, ...node.querySelectorAll('[data-state]')]) {
      if (el instanceof HTMLElement && el.dataset.state === 'pending' && el.dataset.clientId) {
        seen.push(el.dataset.clientId);
      }
    }
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === 'attributes') look(r.target);
      for (const n of r.addedNodes) look(n);
    }
  }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
}

/**
 * A valid PNG of `size`×`size` pixels in one colour (RGBA, no filter), built by hand.
 * @param {number} size
 */
function png(size) {
  /** @param {Buffer} buf */
  const crc32 = (buf) => {
    let c = ~0;
    for (const byte of buf) {
      c ^= byte;
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
    }
    return ~c >>> 0;
  };
  /** @param {string} type @param {Buffer} data */
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header[8] = 8; // bit depth
  header[9] = 6; // RGBA
  const row = Buffer.concat([Buffer.from([0]), Buffer.alloc(size * 4, Buffer.from([0x1f, 0x6f, 0xeb, 0xff]))]);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(Buffer.concat(Array(size).fill(row)))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/**
 * What the page's chat log shows: each message's text, sender, classes and state.
 * @param {Person} person
 */
function chatLog({ page }) {
  return page.evaluate(() => {
    const log = document.querySelector('[role="log"]');
    return {
      text: log?.textContent ?? '',
      messages: [...(log?.querySelectorAll('.msg') ?? [])].map((m) => {
        const el = /** @type {HTMLElement} */ (m);
        return {
          who: el.querySelector('.who')?.textContent ?? null,
          body: el.querySelector('.body')?.textContent ?? '',
          state: el.dataset.state,
          clientId: el.dataset.clientId ?? null,
          own: el.classList.contains('own'),
          private: el.classList.contains('private'),
          tag: el.querySelector('.private-tag')?.textContent ?? null,
        };
      }),
    };
  });
}

/**
 * Waits until the page's log has a message whose body contains `text`; returns it.
 * @param {Person} person
 * @param {string} text
 * @param {(m: Awaited<ReturnType<typeof chatLog>>['messages'][number]) => boolean} [extra]
 */
function waitForMessage(person, text, extra = () => true) {
  return waitFor(`${person.name} to show "${text}"`, async () => {
    const log = await chatLog(person);
    const found = log.messages.find((m) => m.body.includes(text) && extra(m));
    return { ok: found !== undefined, value: found ?? log.messages };
  });
}

/**
 * Types a message in the Message box and clicks Send.
 * @param {Person} person
 * @param {string} text
 */
async function say({ page }, text) {
  await page.getByLabel('Message').fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
}

/**
 * Posts `perBot` × `bots` chat messages from participants that join over raw WebSockets
 * (each stays within the server's burst of 20), waits for all acks, and leaves.
 * @param {Person} person  whose page opens the sockets
 * @param {string} room
 * @param {number} bots
 * @param {number} perBot
 */
function flood({ page }, room, bots, perBot) {
  return page.evaluate(
    ({ room, bots, perBot }) => {
      const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
      /** @param {number} b */
      const bot = (b) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(url);
          let acks = 0;
          ws.onopen = () => ws.send(JSON.stringify({ type: 'join', room, name: `Bot ${b}` }));
          ws.onmessage = (e) => {
            const m = JSON.parse(e.data);
            if (m.type === 'joined') {
              for (let i = 0; i < perBot; i++) {
                ws.send(JSON.stringify({ type: 'chat', text: `bot ${b} says ${i}`, client_id: `b${b}-${i}` }));
              }
            } else if (m.type === 'chat_ack' && ++acks === perBot) {
              ws.send(JSON.stringify({ type: 'leave' }));
              resolve(acks);
            } else if (m.type === 'error') {
              reject(new Error(`bot ${b}: ${m.code}: ${m.message}`));
            }
          };
          ws.onclose = () => reject(new Error(`bot ${b}: closed after ${acks} acks`));
        });
      return Promise.all(Array.from({ length: bots }, (_, b) => bot(b)));
    },
    { room, bots, perBot },
  );
}

/**
 * Joins through the prejoin form and returns the participant id.
 * @param {Person} person
 */
async function join(person) {
  await person.page.getByLabel('Your name').fill(person.name);
  await person.page.getByRole('button', { name: 'Join' }).click();
  return participantId(person);
}

test('chat: public, private, image, HTML as text, unread badge, history after reload', { timeout: 240_000 }, async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'confab-chat-'));
  const server = await startServer({ dataDir, logFile: artifact('chat-server.log') });
  /** @type {import('playwright-core').Browser | null} */
  let browser = null;
  /** @type {Person[]} */
  const people = [];
  let failed = true;
  try {
    browser = await launchChromium();
    const room = `chat-${Math.random().toString(36).slice(2, 10)}`;
    for (const name of ['Alice', 'Bob', 'Carol']) {
      people.push(await openPerson(browser, name, `${server.url}/r/${room}`, [pendingProbe]));
    }
    const [alice, bob, carol] = people;
    const aliceId = await join(alice);
    await join(bob);
    await join(carol);

    // Alice → everyone: pending, then sent with the ack; Bob sees it under her name.
    const hello = 'Hello from Alice, see https://example.com/x.';
    await say(alice, hello);
    const mine = await waitForMessage(alice, hello, (m) => m.state === 'sent');
    assert.ok(mine.own, 'her own message is marked as hers');
    assert.ok(mine.clientId, 'it carries a client_id');
    const pendingSeen = await alice.page.evaluate(() => /** @type {any} */ (window).__pendingSeen);
    assert.ok(pendingSeen.includes(mine.clientId), `shown as pending first: ${JSON.stringify(pendingSeen)}`);
    assert.equal(await alice.page.getByLabel('Message').inputValue(), '', 'the box is emptied');
    for (const person of [bob, carol]) {
      const seen = await waitForMessage(person, hello);
      assert.equal(seen.who, 'Alice');
      assert.ok(!seen.own && !seen.private, JSON.stringify(seen));
    }
    const link = bob.page.getByRole('log').getByRole('link', { name: 'https://example.com/x' });
    assert.equal(await link.getAttribute('href'), 'https://example.com/x');
    assert.equal(await link.getAttribute('target'), '_blank');
    assert.equal(await link.getAttribute('rel'), 'noopener noreferrer');

    // Bob → Alice privately (Enter sends); Carol never gets it. Carol closes the chat first
    // and counts Bob's next public message as unread.
    await carol.page.getByRole('button', { name: 'Chat' }).click();
    assert.equal(await carol.page.getByRole('log').isVisible(), false, 'the panel closes');
    await bob.page.getByLabel('To', { exact: true }).selectOption({ label: 'Alice' });
    const secret = 'psst, only for Alice';
    await bob.page.getByLabel('Message').fill(secret);
    await bob.page.getByLabel('Message').press('Enter');
    const got = await waitForMessage(alice, secret);
    assert.deepEqual([got.who, got.private, got.tag], ['Bob', true, 'private to you']);
    const sent = await waitForMessage(bob, secret, (m) => m.state === 'sent');
    assert.deepEqual([sent.own, sent.private, sent.tag], [true, true, 'private to Alice']);
    // The next public message, with a Shift+Enter line break, travels behind the private one
    // on the same connection: once Carol has it, she would have had the private one too.
    await bob.page.getByLabel('To', { exact: true }).selectOption({ label: 'Everyone' });
    const box = bob.page.getByLabel('Message');
    await box.pressSequentially('line one');
    await box.press('Shift+Enter');
    await box.pressSequentially('line two');
    await box.press('Enter');
    const multi = await waitForMessage(carol, 'line one');
    assert.equal(multi.body, 'line one\nline two');
    assert.ok(!(await chatLog(carol)).text.includes(secret), 'Carol does not see the private message');
    const badge = carol.page.locator('#chat-unread');
    assert.equal((await badge.textContent())?.replace(/\D/g, ''), '1', 'one unread');
    await carol.page.getByRole('button', { name: 'Chat' }).click();
    assert.equal(await badge.isVisible(), false, 'opening the panel clears the badge');

    // Alice sends an image with the file button's input; everyone gets an inline preview.
    await alice.page.locator('#chat-file').setInputFiles({
      name: 'blue.png',
      mimeType: 'image/png',
      buffer: png(8),
    });
    for (const person of [bob, alice]) {
      await waitFor(`${person.name} to show the image preview`, async () => {
        const imgs = await person.page.evaluate(() =>
          [...document.querySelectorAll('[role="log"] img')].map((i) => {
            const img = /** @type {HTMLImageElement} */ (i);
            return { src: img.src, alt: img.alt, complete: img.complete, width: img.naturalWidth };
          }),
        );
        return { ok: imgs.some((i) => i.alt === 'blue.png' && i.complete && i.width === 8), value: imgs };
      });
    }

    // A file dropped on the chat panel is sent too; other types than images become links.
    await alice.page.evaluate(() => {
      const data = new DataTransfer();
      data.items.add(new File(['just text\n'], 'notes.txt', { type: 'text/plain' }));
      const panel = /** @type {HTMLElement} */ (document.getElementById('chat'));
      for (const type of ['dragenter', 'dragover', 'drop']) {
        panel.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
      }
    });
    const fileLink = bob.page.getByRole('log').getByRole('link', { name: /notes\.txt/ });
    await fileLink.waitFor();
    assert.equal(await fileLink.getAttribute('download'), 'notes.txt');
    assert.match((await fileLink.getAttribute('href')) ?? '', /^http:\/\/127\.0\.0\.1:\d+\//);
    assert.equal(await fileLink.locator('img').count(), 0, 'no preview for text');

    // HTML is shown as text and never runs.
    await say(alice, XSS_IMG);
    await say(alice, XSS_SCRIPT);
    await waitForMessage(bob, XSS_SCRIPT);
    await waitForMessage(alice, XSS_SCRIPT, (m) => m.state === 'sent');
    const bobLog = await chatLog(bob);
    assert.ok(bobLog.text.includes(XSS_IMG) && bobLog.text.includes(XSS_SCRIPT), bobLog.text);
    await new Promise((r) => setTimeout(r, 500)); // an onerror would have fired by now
    for (const person of people) {
      const found = await person.page.evaluate(() => ({
        xss: /** @type {any} */ (window).__xss,
        imgX: document.querySelectorAll('img[src="x"]').length,
        scripts: document.querySelectorAll('[role="log"] script').length,
      }));
      assert.deepEqual(found, { xss: undefined, imgX: 0, scripts: 0 }, person.name);
    }

    // Bob's connection now passes through the test, which can drop the server's acks.
    let dropAcks = true;
    await bob.page.routeWebSocket(/\/ws$/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => server.send(m));
      server.onMessage((m) => {
        if (dropAcks && typeof m === 'string' && JSON.parse(m).type === 'chat_ack') return;
        ws.send(m);
      });
    });

    // Bob reloads and joins again: history brings back everything he could see, once.
    await bob.page.reload();
    await join(bob);
    for (const text of [hello, secret, 'line one', 'notes.txt', XSS_IMG, XSS_SCRIPT]) await waitForMessage(bob, text);
    const after = await chatLog(bob);
    assert.equal(after.messages.filter((m) => m.body.includes(hello)).length, 1, 'no duplicates');
    assert.ok(after.messages.find((m) => m.body.includes(secret))?.private, 'still marked private');
    await bob.page.locator('[role="log"] img[alt="blue.png"]').waitFor();
    t.diagnostic(`Bob's history after reload: ${after.messages.length} messages`);

    // A message whose ack never came stays pending; after a reload it is resent with the
    // same client_id, marked sent, and nobody gets it twice.
    const unacked = 'sent just before a reload';
    await say(bob, unacked);
    await waitForMessage(alice, unacked);
    await new Promise((r) => setTimeout(r, 300));
    const waiting = await waitForMessage(bob, unacked);
    assert.equal(waiting.state, 'pending', 'no ack, still pending');
    dropAcks = false;
    await bob.page.reload();
    await join(bob);
    const resent = await waitForMessage(bob, unacked, (m) => m.state === 'sent');
    assert.equal(resent.clientId, waiting.clientId, 'the same client_id');
    await waitForMessage(bob, hello);
    await say(alice, 'after the resend');
    for (const person of [alice, bob, carol]) {
      await waitForMessage(person, 'after the resend');
      const copies = (await chatLog(person)).messages.filter((m) => m.body === unacked);
      assert.equal(copies.length, 1, `${person.name} has it once: ${JSON.stringify(copies)}`);
    }

    // More than the 100 messages a join brings: Carol reloads and pages back with Load older
    // until Alice's first message shows, each message once and in order, the private one never.
    await flood(alice, room, 6, 20);
    await carol.page.reload();
    await join(carol);
    await waitForMessage(carol, 'bot 5 says 19');
    const older = carol.page.getByRole('button', { name: 'Load older' });
    await older.waitFor();
    const firstBatch = (await chatLog(carol)).messages.length;
    assert.ok(firstBatch >= 100 && firstBatch < 140, `the join brought the last 100: ${firstBatch}`);
    assert.ok(!(await chatLog(carol)).text.includes(hello), 'Alice\'s first message is older than that');
    await older.click();
    await waitForMessage(carol, hello);
    await waitFor('Load older to disappear once nothing older exists', async () => {
      const hidden = await older.isHidden();
      if (!hidden && (await older.isEnabled())) await older.click();
      return { ok: hidden, value: { hidden } };
    });
    const ids = await carol.page.evaluate(() =>
      [...document.querySelectorAll('[role="log"] [data-id]')].map((m) => Number(/** @type {HTMLElement} */ (m).dataset.id)),
    );
    assert.deepEqual(ids, [...new Set(ids)].sort((a, b) => a - b), 'each once, oldest first');
    assert.ok(!(await chatLog(carol)).text.includes(secret), 'history keeps private messages private');

    // Alice is told about the rejoin (or not) only by the server's system notices, if any.
    const notices = (await chatLog(alice)).messages.filter((m) => m.who === null).map((m) => m.body);
    t.diagnostic(`system notices Alice saw: ${JSON.stringify(notices)} (Alice is ${aliceId})`);
    failed = false;
  } finally {
    for (const person of people) await saveDiagnostics(person, `chat-${person.name}`);
    await closeBrowser(browser);
    const exit = await server.stop();
    if (exit !== 0) t.diagnostic(`server exit after SIGTERM: ${exit}`);
    if (failed) console.error(`--- server output (tail) ---\n${server.tail()}`);
    rmSync(dataDir, { recursive: true, force: true });
  }
});
