// @ts-check
/** Unit tests of web/chat.js (the chat without DOM); they run in Node without a browser. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  Chat,
  MAX_TEXT_CHARS,
  Outbox,
  checkText,
  formatSize,
  linkify,
  loadIdentity,
  safeHttpUrl,
} from '../../web/chat.js';

/** @typedef {import('../../web/protocol.js').ChatMessage} ChatMessage */

test('texts are trimmed and must hold 1–4000 characters (not UTF-16 units)', () => {
  const cases = [
    { raw: '  hi \n', want: { ok: true, text: 'hi' } },
    { raw: 'a\nb', want: { ok: true, text: 'a\nb' } },
    { raw: '', ok: false },
    { raw: ' \n\t ', ok: false },
    { raw: '😀'.repeat(MAX_TEXT_CHARS), ok: true },
    { raw: 'x'.repeat(MAX_TEXT_CHARS + 1), ok: false },
  ];
  for (const c of cases) {
    const got = checkText(c.raw);
    if (c.want) assert.deepEqual(got, c.want, JSON.stringify(c.raw));
    else assert.equal(got.ok, c.ok, JSON.stringify(c.raw).slice(0, 40));
  }
});

test('linkify turns only http(s) URLs into links and keeps every character', () => {
  const cases = [
    { text: 'no links here', want: [{ text: 'no links here' }] },
    {
      text: 'see https://example.com/a?b=1#c.',
      want: [{ text: 'see ' }, { text: 'https://example.com/a?b=1#c', href: 'https://example.com/a?b=1#c' }, { text: '.' }],
    },
    {
      text: '(wiki http://en.wikipedia.org/wiki/Foo_(bar))',
      want: [
        { text: '(wiki ' },
        { text: 'http://en.wikipedia.org/wiki/Foo_(bar)', href: 'http://en.wikipedia.org/wiki/Foo_(bar)' },
        { text: ')' },
      ],
    },
    {
      text: 'HTTPS://EXAMPLE.COM, then',
      want: [{ text: 'HTTPS://EXAMPLE.COM', href: 'https://example.com/' }, { text: ', then' }],
    },
    { text: 'javascript:alert(1)', want: [{ text: 'javascript:alert(1)' }] },
    { text: 'data:text/html,<b>x</b>', want: [{ text: 'data:text/html,<b>x</b>' }] },
    { text: 'http://', want: [{ text: 'http://' }] },
    {
      text: '<https://x.test/"onmouseover=alert(1)>',
      want: [{ text: '<' }, { text: 'https://x.test/', href: 'https://x.test/' }, { text: '"onmouseover=alert(1)>' }],
    },
    {
      text: 'a https://a.test b https://b.test',
      want: [
        { text: 'a ' },
        { text: 'https://a.test', href: 'https://a.test/' },
        { text: ' b ' },
        { text: 'https://b.test', href: 'https://b.test/' },
      ],
    },
  ];
  for (const { text, want } of cases) {
    const got = linkify(text);
    assert.deepEqual(got, want, text);
    assert.equal(got.map((p) => p.text).join(''), text, `${text}: nothing lost`);
    for (const p of got) if (p.href) assert.match(p.href, /^https?:\/\//);
  }
});

test('only http(s) URLs are safe; relative ones resolve against the page', () => {
  assert.equal(safeHttpUrl('/api/rooms/r/files/ab', 'http://h:1/r/r'), 'http://h:1/api/rooms/r/files/ab');
  assert.equal(safeHttpUrl('javascript:alert(1)', 'http://h/'), null);
  assert.equal(safeHttpUrl(' JavaScript:alert(1)', 'http://h/'), null);
  assert.equal(safeHttpUrl('data:image/png;base64,AA', 'http://h/'), null);
  assert.equal(safeHttpUrl('no base'), null);
});

test('sizes read like people write them', () => {
  assert.deepEqual(
    [0, 1023, 1024, 1536, 10 * 1024, 25 * 1024 * 1024].map(formatSize),
    ['0 B', '1023 B', '1.0 KB', '1.5 KB', '10 KB', '25 MB'],
  );
});

/** A Storage stand-in. */
function memoryStorage(initial = {}) {
  /** @type {Map<string, string>} */
  const map = new Map(Object.entries(initial));
  return {
    map,
    /** @param {string} k */
    getItem: (k) => map.get(k) ?? null,
    /** @param {string} k @param {string} v */
    setItem: (k, v) => void map.set(k, v),
    /** @param {string} k */
    removeItem: (k) => void map.delete(k),
  };
}

test('the identity is created once, kept, and replaced when malformed', () => {
  const storage = memoryStorage();
  const id = loadIdentity(storage, () => new Uint8Array(16).fill(0xab));
  assert.equal(id, 'ab'.repeat(16));
  assert.equal(loadIdentity(storage, () => new Uint8Array(16)), id, 'reused');
  storage.setItem('confab.identity', 'short');
  assert.equal(loadIdentity(storage, () => new Uint8Array(16)), '0'.repeat(32), 'replaced');
  const broken = {
    getItem: () => {
      throw new Error('denied');
    },
    setItem: () => {
      throw new Error('denied');
    },
  };
  assert.equal(loadIdentity(broken, () => new Uint8Array(16).fill(1)), '01'.repeat(16));
  assert.equal(loadIdentity(null).length, 32);
});

/** @param {string} id */
const entry = (id) => ({ clientId: id, text: id, to: null, toName: null, createdAt: 0 });

test('the outbox paces sends below the server limit and resends after rate_limited', () => {
  const box = new Outbox({ burst: 3, perSecond: 2, backoffMs: 1000 });
  for (const id of ['a', 'b', 'c', 'd', 'e']) box.add(entry(id));
  assert.deepEqual(box.poll(0), { send: [], wakeAt: null }, 'offline: nothing');
  box.connected(1000);
  let out = box.poll(1000);
  assert.deepEqual(out.send.map((e) => e.clientId), ['a', 'b', 'c'], 'a burst');
  assert.equal(out.wakeAt, 1500, 'the next token');
  assert.deepEqual(box.poll(1200).send, [], 'no token yet');
  out = box.poll(1500);
  assert.deepEqual(out.send.map((e) => e.clientId), ['d']);
  box.ack('a');
  box.ack('b');
  // The server refused one: everything unacknowledged goes again after the pause, paced.
  box.rateLimited(1600);
  out = box.poll(1700);
  assert.deepEqual(out, { send: [], wakeAt: 2600 });
  out = box.poll(2600);
  assert.deepEqual(out.send.map((e) => e.clientId), ['c']);
  assert.deepEqual(box.poll(3100).send.map((e) => e.clientId), ['d']);
  assert.deepEqual(box.poll(3600).send.map((e) => e.clientId), ['e']);
  assert.deepEqual(box.poll(9000), { send: [], wakeAt: null }, 'all in flight');
  // A new connection sends everything unacknowledged again.
  box.disconnected();
  box.connected(10_000);
  assert.deepEqual(box.poll(10_000).send.map((e) => e.clientId), ['c', 'd', 'e']);
  // A refusal without client_id drops the oldest in flight that fits.
  box.entries.set('p', { ...entry('p'), to: 'bob' });
  box.poll(20_000);
  assert.equal(box.refuseOne((e) => e.to !== null)?.clientId, 'p');
  assert.equal(box.refuseOne(() => false)?.clientId, 'c');
  assert.deepEqual([...box.entries.keys()], ['d', 'e']);
});

/** A ConfabClient stand-in that records what the chat sends. */
class FakeClient extends EventTarget {
  constructor() {
    super();
    this.open = false;
    /** @type {Array<{text: string, to: string | null, clientId: string}>} */
    this.sent = [];
    /** @type {number[]} */
    this.historyRequests = [];
  }
  /** @param {string} text @param {string | null} to @param {string} clientId */
  sendChat(text, to, clientId) {
    if (this.open) this.sent.push({ text, to, clientId });
    return this.open;
  }
  /** @param {number} before */
  requestHistory(before) {
    this.historyRequests.push(before);
    return this.open;
  }
  /** @param {string} type @param {unknown} detail */
  fire(type, detail = {}) {
    if (type === 'joined') this.open = true;
    if (type === 'closed') this.open = false;
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * @param {number} id
 * @param {Partial<ChatMessage>} [fields]
 * @returns {ChatMessage}
 */
function msg(id, fields = {}) {
  return {
    id, room: 'r', from: 'bob', name: 'Bob', text: `m${id}`, ts: 1_700_000_000_000 + id,
    to: null, private: false, kind: 'text', file: null, client_id: null, ...fields,
  };
}

/** @param {Chat} chat */
function record(chat) {
  /** @type {Array<[string, any]>} */
  const events = [];
  for (const type of ['message', 'pending', 'sent', 'failed', 'more']) {
    chat.addEventListener(type, (e) => events.push([type, /** @type {CustomEvent} */ (e).detail]));
  }
  return events;
}

test('a message is pending until acknowledged, survives a reload, and is resent with its client_id', () => {
  const storage = memoryStorage();
  let n = 0;
  const opts = { room: 'r', storage, newClientId: () => `c${++n}`, now: () => 0 };
  const chat = new Chat(opts);
  const events = record(chat);
  const first = new FakeClient();
  chat.attach(/** @type {any} */ (first));

  // Written before the connection is up: pending, not sent, persisted.
  chat.send('hello', null);
  assert.deepEqual(first.sent, []);
  assert.deepEqual(events.map((e) => e[0]), ['pending']);
  assert.ok(storage.map.get('confab.outbox.r')?.includes('hello'));

  first.fire('joined');
  chat.send('to alice', { id: 'alice', name: 'Alice' });
  assert.deepEqual(first.sent, [
    { text: 'hello', to: null, clientId: 'c1' },
    { text: 'to alice', to: 'alice', clientId: 'c2' },
  ]);
  first.fire('chat-ack', { client_id: 'c1', message: msg(10, { from: 'me', client_id: 'c1', text: 'hello' }) });
  assert.deepEqual(events.at(-1), ['sent', { clientId: 'c1', message: msg(10, { from: 'me', client_id: 'c1', text: 'hello' }) }]);

  // The page reloads before c2's ack: a new Chat restores it and resends it at the join.
  first.fire('closed');
  const again = new Chat(opts);
  const events2 = record(again);
  const second = new FakeClient();
  again.attach(/** @type {any} */ (second));
  second.fire('joined');
  assert.deepEqual(events2.map((e) => [e[0], e[1].entry?.clientId]), [['pending', 'c2']]);
  assert.deepEqual(second.sent, [{ text: 'to alice', to: 'alice', clientId: 'c2' }]);

  // Its stored copy shows up in the history sent at the join: that counts as the ack, and
  // the later ack of the resend changes nothing.
  const stored = msg(11, { from: 'me', client_id: 'c2', to: 'alice', private: true, text: 'to alice' });
  second.fire('history', { messages: [msg(10, { from: 'me', client_id: 'c1' }), stored], more: false });
  second.fire('chat-ack', { client_id: 'c2', message: stored });
  assert.deepEqual(
    events2.slice(1).map((e) => [e[0], e[1].message?.id ?? e[1].more]),
    [['message', 10], ['sent', 11], ['more', false]],
  );
  assert.equal(storage.map.has('confab.outbox.r'), false, 'outbox emptied');
});

test('history: each message once, "more" and Load older ask before the oldest id', () => {
  const chat = new Chat({ room: 'r' });
  const events = record(chat);
  const client = new FakeClient();
  chat.attach(/** @type {any} */ (client));
  client.fire('joined');
  client.fire('history', { messages: [msg(5), msg(6), msg(7)], more: true });
  client.fire('chat', { message: msg(8) });
  client.fire('chat', { message: msg(8) });
  assert.equal(chat.loadOlder(), true);
  assert.deepEqual(client.historyRequests, [5]);
  client.fire('history', { messages: [msg(3), msg(4)], more: false });
  // A rejoin's history (newest 100) must not hide Load older's answer about older ones.
  client.fire('history', { messages: [msg(7), msg(8), msg(9)], more: true });
  assert.equal(chat.more, false);
  assert.equal(chat.loadOlder(), false);
  assert.deepEqual(
    events.map(([type, d]) => (type === 'message' ? `${d.message.id}${d.live ? '!' : ''}` : `${type}=${d.more}`)),
    ['5', '6', '7', 'more=true', '8!', '3', '4', 'more=false', '9'],
  );
});

test('a refused private message is reported failed and leaves the outbox', () => {
  const chat = new Chat({ room: 'r', newClientId: () => 'x' });
  const events = record(chat);
  const client = new FakeClient();
  chat.attach(/** @type {any} */ (client));
  client.fire('joined');
  chat.send('psst', { id: 'ghost', name: 'Ghost' });
  client.fire('server-error', { code: 'unknown_recipient', message: 'no such participant' });
  assert.deepEqual(events.at(-1), ['failed', { clientId: 'x', reason: 'Ghost is no longer in the room' }]);
  assert.equal(chat.pending().length, 0);
  client.fire('server-error', { code: 'bad_sdp', message: 'unrelated' });
  assert.equal(events.length, 2);
});
