// @ts-check
/** Unit tests of web/protocol.js's pure helpers; they run in Node without a browser. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  iceServersFrom,
  layerFor,
  layerForWidth,
  preferredCodecOrder,
  readTokenClaims,
  signalingUrl,
  simulcastEncodings,
  streamIdsByMid,
  uploadUrl,
} from '../../web/protocol.js';

test('H.264 packetization-mode=1 42e01f comes first, then other H.264, then VP8, then the rest', () => {
  // Roughly Chromium's video receive capabilities, in its order.
  const caps = [
    { mimeType: 'video/VP8' },
    { mimeType: 'video/rtx' },
    { mimeType: 'video/H264', sdpFmtpLine: 'level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f' },
    { mimeType: 'video/H264', sdpFmtpLine: 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f' },
    { mimeType: 'video/H264', sdpFmtpLine: 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f' },
    { mimeType: 'video/H264', sdpFmtpLine: 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f' },
    { mimeType: 'video/VP9', sdpFmtpLine: 'profile-id=0' },
    { mimeType: 'video/AV1' },
    { mimeType: 'video/red' },
    { mimeType: 'video/ulpfec' },
  ];
  const order = preferredCodecOrder(caps).map((c) => `${c.mimeType} ${c.sdpFmtpLine ?? ''}`.trim());
  assert.deepEqual(order, [
    'video/H264 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f',
    'video/H264 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f',
    'video/H264 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f',
    'video/H264 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f',
    'video/VP8',
    'video/rtx',
    'video/VP9 profile-id=0',
    'video/AV1',
    'video/red',
    'video/ulpfec',
  ]);
  assert.equal(caps.length, 10, 'the input is not modified');
});

test('audio keeps its order with Opus first', () => {
  const order = preferredCodecOrder([
    { mimeType: 'audio/red' },
    { mimeType: 'audio/opus', sdpFmtpLine: 'minptime=10;useinbandfec=1' },
    { mimeType: 'audio/PCMU' },
  ]).map((c) => c.mimeType);
  assert.deepEqual(order, ['audio/opus', 'audio/red', 'audio/PCMU']);
});

test('stream ids (publisher ids) are read per mid from a subscribe offer', () => {
  const sdp = [
    'v=0',
    'o=- 1 1 IN IP4 0.0.0.0',
    's=-',
    't=0 0',
    'a=group:BUNDLE 0 1 2',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111',
    'a=mid:0',
    'a=sendonly',
    'a=msid:bob bob-a0',
    'm=video 9 UDP/TLS/RTP/SAVPF 96',
    'a=mid:1',
    'a=msid:bob bob-v0',
    'm=video 9 UDP/TLS/RTP/SAVPF 96',
    'a=mid:2',
    'a=inactive',
    '',
  ].join('\r\n');
  assert.deepEqual([...streamIdsByMid(sdp)], [['0', 'bob'], ['1', 'bob']]);
});

test('the signaling URL follows the page scheme', () => {
  assert.equal(signalingUrl({ protocol: 'http:', host: '127.0.0.1:8080' }), 'ws://127.0.0.1:8080/ws');
  assert.equal(signalingUrl({ protocol: 'https:', host: 'meet.example' }), 'wss://meet.example/ws');
});

test('uploads go to the files route of the room on the signaling server, over http(s)', () => {
  assert.equal(uploadUrl('ws://127.0.0.1:8080/ws', 'demo'), 'http://127.0.0.1:8080/api/rooms/demo/files');
  assert.equal(uploadUrl('wss://meet.example/ws?x=1', 'a.b_c-d'), 'https://meet.example/api/rooms/a.b_c-d/files');
});

/**
 * A JWT-shaped string with `claims` as its payload (the signature is not checked client-side).
 * @param {unknown} claims
 */
function fakeToken(claims) {
  const part = (/** @type {unknown} */ v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}.c2lnbmF0dXJl`;
}

test('join token claims: name and role read from the payload, UTF-8 names intact', () => {
  const token = fakeToken({ room: 'demo', name: 'Zoë Ødegård 会議', role: 'viewer', exp: 2_000_000_000, iat: 1 });
  assert.deepEqual(readTokenClaims(token), { room: 'demo', name: 'Zoë Ødegård 会議', role: 'viewer', exp: 2_000_000_000 });
  assert.equal(readTokenClaims(fakeToken({ room: 'demo', name: 'Op', role: 'operator' }))?.role, 'operator');
  // An unknown role is shown as the default one; the server decides anyway.
  assert.equal(readTokenClaims(fakeToken({ room: 'demo', name: 'X', role: 'king' }))?.role, 'presenter');
});

test('join token claims: anything else is null, never an exception', () => {
  for (const bad of [
    '',
    'abc',
    'a.b',
    'a.b.c.d',
    'a.!!!.c',
    `x.${Buffer.from('not json').toString('base64url')}.y`,
    `x.${Buffer.from('[1,2]').toString('base64url')}.y`,
    `x.${Buffer.from('null').toString('base64url')}.y`,
    fakeToken({ room: 5, name: 'x' }),
    fakeToken({ room: 'demo' }),
    `x.${Buffer.from([0xff, 0xfe, 0x7b]).toString('base64url')}.y`,
  ]) {
    assert.equal(readTokenClaims(bad), null, `for ${JSON.stringify(bad)}`);
  }
});

test('TURN: iceServers on the page host from the server grant, none without one', () => {
  const grant = { username: '1800000000:ann', credential: 'c2VjcmV0', expires: 1800000000, udp: 3478, tcp: 3478, tls: 5349 };
  assert.deepEqual(iceServersFrom(grant, 'meet.example.org'), [
    {
      urls: [
        'turn:meet.example.org:3478?transport=udp',
        'turn:meet.example.org:3478?transport=tcp',
        'turns:meet.example.org:5349?transport=tcp',
      ],
      username: '1800000000:ann',
      credential: 'c2VjcmV0',
    },
  ]);
  assert.deepEqual(iceServersFrom({ ...grant, tls: null }, '[::1]')[0].urls, [
    'turn:[::1]:3478?transport=udp',
    'turn:[::1]:3478?transport=tcp',
  ]);
  assert.deepEqual(iceServersFrom(null, 'x'), []);
  assert.deepEqual(iceServersFrom({ ...grant, udp: null, tcp: null, tls: null }, 'x'), []);
});

test('a camera is sent as simulcast layers by its height, and a tile asks for the layer that fills it', () => {
  const hd = simulcastEncodings(720);
  assert.deepEqual(hd?.map((e) => [e.rid, e.scaleResolutionDownBy ?? 1]), [['q', 4], ['h', 2], ['f', 1]]);
  assert.ok(hd && hd.every((e, i) => i === 0 || (e.maxBitrate ?? 0) > (hd[i - 1].maxBitrate ?? 0)));
  assert.deepEqual(simulcastEncodings(360)?.map((e) => e.rid), ['q', 'f']);
  assert.equal(simulcastEncodings(240), null, 'too small to split');
  assert.deepEqual([160, 400, 401, 800, 801, 2400].map(layerForWidth), [0, 0, 1, 1, 2, 2]);
});

test('the data saver asks for the smallest layer, or for no video', () => {
  assert.equal(layerFor(1200, 'normal'), 2);
  assert.equal(layerFor(1200, 'low'), 0);
  assert.equal(layerFor(1200, 'audio'), null);
  assert.equal(layerFor(0, 'normal'), null, 'a tile out of view');
});
