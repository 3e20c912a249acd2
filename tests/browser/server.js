// @ts-check
/**
 * Runs a confab server for a test: spawned on free loopback ports, its address read from the
 * `http listening on http://…` line it prints at start, its output kept in a log file. Also
 * runs the binary's tools (`confab token`, `confab hash-password`) for tests that need
 * protected rooms.
 */
import { execFile, spawn } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * A free loopback TCP port (free a moment ago).
 * @returns {Promise<number>}
 */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * ffmpeg (`$FFMPEG_BIN`, else `ffmpeg`) run with `args`; the last 200 lines of its stderr are
 * kept for failure messages.
 * @param {string[]} args
 * @param {string} [label]  what it is, for `describe()`
 */
export function spawnFfmpeg(args, label = 'ffmpeg') {
  const proc = spawn(process.env.FFMPEG_BIN ?? 'ffmpeg', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  /** @type {string[]} */
  const lines = [];
  /** @type {number | string | null} */
  let exit = null;
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (/** @type {string} */ chunk) => {
    lines.push(...chunk.split('\n').filter(Boolean));
    if (lines.length > 200) lines.splice(0, lines.length - 200);
  });
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exit = code ?? signal;
      resolve(exit);
    });
    proc.on('error', (err) => {
      lines.push(`spawn failed: ${err.message}`);
      exit = 'spawn failed';
      resolve(exit);
    });
  });
  return {
    /** What ffmpeg said, and whether it has exited. */
    describe: () => `${label} (exit: ${exit ?? 'still running'}):\n${lines.join('\n')}`,
    running: () => exit === null,
    stop: async () => {
      if (exit === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** The server binary: $CONFAB_BIN, else the debug build of this checkout. */
export function serverBinary() {
  const bin = process.env.CONFAB_BIN ?? path.join(REPO_ROOT, 'target/debug/confab');
  if (!existsSync(bin)) {
    throw new Error(`no server binary at ${bin}: run \`cargo build -p confab\` or set CONFAB_BIN`);
  }
  return bin;
}

/**
 * @typedef {object} RunningServer
 * @property {string} url        e.g. `http://127.0.0.1:41234`
 * @property {() => {http: string, rtsp: string | null, media: string | null}} addresses  the
 *   listeners as printed at start (`127.0.0.1:41234`), to start another server on the same
 *   ports
 * @property {() => string} tail  the last lines of its output, for failure messages
 * @property {() => Promise<number | string | null>} stop  SIGTERM, then SIGKILL after 5 s;
 *   resolves with the exit code (or the signal that ended it)
 * @property {() => Promise<number | string | null>} kill  SIGKILL at once (a crash)
 */

/**
 * @param {object} options
 * @param {string} options.dataDir
 * @param {string} options.logFile
 * @param {number} [options.timeoutMs]  how long to wait for the listening line
 * @param {{http?: string, rtsp?: string | null, media?: string | null}} [options.listen]
 *   addresses to listen on (default: free loopback ports), e.g. a stopped server's
 *   `addresses()` to restart it in place
 * @param {string} [options.config]  a TOML configuration file (`--config`)
 * @param {string[]} [options.args]  more flags, after the others
 * @returns {Promise<RunningServer>}
 */
export function startServer({ dataDir, logFile, timeoutMs = 30_000, listen = {}, config, args: extra = [] }) {
  const bin = serverBinary();
  const args = [
    '--http', listen.http ?? '127.0.0.1:0',
    '--rtsp', listen.rtsp ?? '127.0.0.1:0',
    '--media', listen.media ?? '127.0.0.1:0',
  ];
  args.push('--data', dataDir);
  if (config) args.push('--config', config);
  args.push(...extra);
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = createWriteStream(logFile);
  /** @type {string[]} */
  const lines = [];
  const tail = () => lines.slice(-60).join('\n');
  /** @type {{rtsp: string | null, media: string | null}} */
  const listening = { rtsp: null, media: null };

  /** @type {Promise<number | string | null>} */
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve(code ?? signal));
    proc.on('error', (err) => {
      lines.push(`spawn failed: ${err.message}`);
      resolve(null);
    });
  });

  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await new Promise((resolve) => log.end(resolve));
    return exited;
  };

  const kill = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    return stop();
  };

  return new Promise((resolve, reject) => {
    let found = false;
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`server printed no "http listening on" line within ${timeoutMs} ms:\n${tail()}`));
    }, timeoutMs);

    /**
     * @param {import('node:stream').Readable} stream
     * @param {string} label
     */
    const readLines = (stream, label) => {
      let buffered = '';
      stream.setEncoding('utf8');
      stream.on('data', (/** @type {string} */ chunk) => {
        log.write(chunk);
        buffered += chunk;
        const parts = buffered.split('\n');
        buffered = parts.pop() ?? '';
        for (const raw of parts) {
          const line = raw.replace(/\x1b\[[0-9;]*m/g, '');
          lines.push(`${label}| ${line}`);
          if (lines.length > 2000) lines.splice(0, 1000);
          const rtsp = /rtsp listening on rtsp:\/\/([^\s/]+)/.exec(line);
          if (rtsp) listening.rtsp = rtsp[1];
          const media = /media listening on udp ([^\s]+)/.exec(line);
          if (media) listening.media = media[1];
          const m = /http listening on (https?:\/\/[^\s]+)/.exec(line);
          if (m && !found) {
            found = true;
            clearTimeout(timer);
            const url = m[1].replace(/\/$/, '');
            const addresses = () => ({ http: new URL(url).host, ...listening });
            resolve({ url, addresses, tail, stop, kill });
          }
        }
      });
    };
    readLines(/** @type {import('node:stream').Readable} */ (proc.stdout), 'out');
    readLines(/** @type {import('node:stream').Readable} */ (proc.stderr), 'err');

    exited.then((code) => {
      if (found) return;
      clearTimeout(timer);
      reject(new Error(`server exited (${code}) before listening:\n${tail()}`));
    });
  });
}

/**
 * Runs one of the binary's tools and resolves with what it printed (trimmed); rejects with its
 * error output if it fails or takes longer than 30 s.
 * @param {string[]} args  e.g. `['--data', dir, 'token', '--room', 'r', '--name', 'Ann']`
 * @param {string} [input]  written to its standard input
 * @returns {Promise<string>}
 */
export function runTool(args, input) {
  return new Promise((resolve, reject) => {
    const child = execFile(serverBinary(), args, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`confab ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
    child.stdin?.end(input ?? '');
  });
}

/**
 * A signed join token from `confab token`, for a server started with the same data directory.
 * @param {{dataDir: string, room: string, name: string, role: 'presenter' | 'viewer' | 'operator', ttl?: string}} options
 */
export function joinToken({ dataDir, room, name, role, ttl = '1h' }) {
  return runTool(['--data', dataDir, 'token', '--room', room, '--name', name, '--role', role, '--ttl', ttl]);
}

/**
 * The argon2 hash of `password` for a `[[room]]`'s `password_hash`, from `confab hash-password`.
 * @param {string} password
 * @param {string} dataDir  (the tool reads the configuration like the server does)
 */
export function passwordHash(password, dataDir) {
  return runTool(['--data', dataDir, 'hash-password'], `${password}\n`);
}
