// @ts-check
/** Unit tests of web/protocol.js's pure helpers; they run in Node without a browser. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { preferredCodecOrder, signalingUrl, streamIdsByMid, uploadUrl } from '../../web/protocol.js';

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
