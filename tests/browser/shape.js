// @ts-check
/**
 * A slow link for one UDP port: rate-limits the datagrams going to a local port on the
 * loopback interface with `tc` (iproute2; needs root, or CAP_NET_ADMIN), so a browser test can
 * squeeze one person's downlink while everything else stays as fast as loopback.
 *
 * Why it is done this way:
 * - The server and Chromium run on the same host. The server sends from 127.0.0.1 and
 *   Chromium's candidate is 127.0.0.1 or the host's own address; both are local addresses, so
 *   the kernel delivers those datagrams through `lo`'s egress, once. Shaping there slows the
 *   real path in one direction with neither peer knowing: a relay in the test would change
 *   the ICE candidates and add its own scheduling on a busy machine, and Chromium cannot be
 *   handed the in-process impairment the Rust fault tests use.
 * - The server sends all of its media from one UDP port, so only the destination port tells
 *   one subscriber's link from another's (and from the same page's publish connection, which
 *   has a port of its own). A u32 filter matches `ip protocol 17` and `ip dport`: IPv4 only,
 *   as the server's media listener is on 127.0.0.1, and a 20-byte IP header, as UDP has.
 * - htb: a root with a default class of 10gbit keeps everything unmatched unlimited (the
 *   server's WebSocket, the other people's media); each shaped port has a class of its own
 *   whose rate can be changed in place while the call runs.
 * - burst/cburst 2k and a small quantum: htb derives its default burst from the MTU, which on
 *   `lo` is 65536, so it would let 64 KB through at once (over a second at 400 kbit/s), where
 *   WebRTC packets are at most about 1200 bytes: 2 KB is one packet or two.
 * - A bfifo leaf holding about 250 ms at the class's rate: a bottleneck with a modest buffer,
 *   as on a home link, so congestion shows first as growing delay and then as loss (what a
 *   delay-based estimate such as TWCC's reacts to). The default leaf (1000 packets) would
 *   add seconds of delay before dropping anything.
 *
 * The module assumes the test owns `lo`'s root qdisc while it runs: `clearAll()` deletes it.
 */
import { execFile } from 'node:child_process';

const DEV = 'lo';
/** The root qdisc's handle (major number) and its default class, `1:1`. */
const ROOT = '1';
const DEFAULT_CLASS = `${ROOT}:1`;
/** How long the shaped queue holds at its rate before dropping (tail drop). */
const QUEUE_SECONDS = 0.25;
/** The smallest queue: a few full-size WebRTC packets, so very low rates still pass any. */
const MIN_QUEUE_BYTES = 4 * 1500;

/**
 * Runs `tc` with `args`; rejects with its error output, or after 10 s.
 * @param {string[]} args
 * @returns {Promise<string>}
 */
function tc(args) {
  return new Promise((resolve, reject) => {
    execFile('tc', args, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`tc ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

/**
 * Throws, saying what to do, unless this process can shape with tc: it is root and `tc`
 * (iproute2) runs. Tests call it before they start anything, so a machine that cannot shape
 * fails at once and plainly instead of skipping.
 */
export async function requireTc() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('shaping loopback with tc needs root (CAP_NET_ADMIN): run this test as root');
  }
  await new Promise((resolve, reject) => {
    execFile('tc', ['-V'], { timeout: 10_000 }, (err, stdout) => {
      if (err) {
        reject(new Error(`tc (iproute2) is needed to shape loopback and did not run: ${err.message}; install iproute2`));
      } else {
        resolve(stdout);
      }
    });
  });
}

/**
 * The htb parameters of a class of `kbit` kbit/s.
 * @param {number} kbit
 */
function classArgs(kbit) {
  return ['htb', 'rate', `${kbit}kbit`, 'ceil', `${kbit}kbit`, 'burst', '2k', 'cburst', '2k', 'quantum', '1600'];
}

/**
 * The bfifo limit for `kbit` kbit/s: QUEUE_SECONDS of it, in bytes.
 * @param {number} kbit
 */
function queueBytes(kbit) {
  return Math.max(MIN_QUEUE_BYTES, Math.round(((kbit * 1000) / 8) * QUEUE_SECONDS));
}

/** Adds the htb root and its unlimited default class unless they are there. */
async function ensureRoot() {
  /** @type {Array<{kind: string, handle: string}>} */
  const qdiscs = JSON.parse(await tc(['-j', 'qdisc', 'show', 'dev', DEV, 'root']));
  const root = qdiscs[0];
  if (root?.kind === 'htb' && root.handle === `${ROOT}:`) return;
  if (root && root.kind !== 'noqueue') {
    throw new Error(
      `${DEV} already has a root qdisc (${root.kind} ${root.handle}) that is not ours; ` +
        `remove it with \`tc qdisc del dev ${DEV} root\``,
    );
  }
  await tc(['qdisc', 'add', 'dev', DEV, 'root', 'handle', `${ROOT}:`, 'htb', 'default', '1']);
  await tc([
    'class', 'add', 'dev', DEV, 'parent', `${ROOT}:`, 'classid', DEFAULT_CLASS,
    'htb', 'rate', '10gbit', 'burst', '1mb', 'cburst', '1mb', 'quantum', '200000',
  ]);
}

/**
 * @typedef {object} Shaper
 * @property {number} port
 * @property {(kbit: number) => Promise<void>} change  sets another rate (and queue) in place
 * @property {() => Promise<{bytes: number, packets: number, drops: number}>} stats  what the
 *   class has let through and dropped so far (its leaf's counters)
 * @property {() => Promise<void>} remove  takes the filter, the class and its queue out;
 *   doing it again does nothing
 */

/**
 * Limits the UDP datagrams to local `port` on `lo` to `kbit` kbit/s from now on.
 * @param {number} port  1024–65534 (the class and queue are numbered after it)
 * @param {number} kbit
 * @returns {Promise<Shaper>}
 */
export async function shape(port, kbit) {
  if (!Number.isInteger(port) || port < 1024 || port > 65534) throw new Error(`cannot shape port ${port}`);
  await ensureRoot();
  const minor = port.toString(16);
  const classid = `${ROOT}:${minor}`;
  // The leaf's handle and the filter's priority are the port too: one of each per port, so
  // each can be deleted alone.
  const leaf = `${minor}:`;
  const prio = String(port);
  await tc(['class', 'add', 'dev', DEV, 'parent', `${ROOT}:`, 'classid', classid, ...classArgs(kbit)]);
  await tc(['qdisc', 'add', 'dev', DEV, 'parent', classid, 'handle', leaf, 'bfifo', 'limit', String(queueBytes(kbit))]);
  await tc([
    'filter', 'add', 'dev', DEV, 'parent', `${ROOT}:`, 'protocol', 'ip', 'prio', prio,
    'u32', 'match', 'ip', 'protocol', '17', '0xff', 'match', 'ip', 'dport', String(port), '0xffff',
    'flowid', classid,
  ]);
  let removed = false;
  return {
    port,
    async change(kbit) {
      await tc(['class', 'change', 'dev', DEV, 'parent', `${ROOT}:`, 'classid', classid, ...classArgs(kbit)]);
      await tc(['qdisc', 'change', 'dev', DEV, 'parent', classid, 'handle', leaf, 'bfifo', 'limit', String(queueBytes(kbit))]);
    },
    async stats() {
      /** @type {Array<{handle: string, bytes: number, packets: number, drops: number}>} */
      const qdiscs = JSON.parse(await tc(['-j', '-s', 'qdisc', 'show', 'dev', DEV]));
      const q = qdiscs.find((q) => q.handle === leaf);
      if (!q) throw new Error(`no queue ${leaf} on ${DEV} for port ${port}`);
      return { bytes: q.bytes, packets: q.packets, drops: q.drops };
    },
    async remove() {
      if (removed) return;
      removed = true;
      await tc(['filter', 'del', 'dev', DEV, 'parent', `${ROOT}:`, 'protocol', 'ip', 'prio', prio]);
      // Deleting the class deletes its leaf queue with it.
      await tc(['class', 'del', 'dev', DEV, 'parent', `${ROOT}:`, 'classid', classid]);
    },
  };
}

/** Deletes `lo`'s root qdisc, and with it every class and filter; nothing if there is none. */
export async function clearAll() {
  /** @type {Array<{kind: string}>} */
  const qdiscs = JSON.parse(await tc(['-j', 'qdisc', 'show', 'dev', DEV, 'root']));
  if (!qdiscs[0] || qdiscs[0].kind === 'noqueue') return;
  await tc(['qdisc', 'del', 'dev', DEV, 'root']);
}
