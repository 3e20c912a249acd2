import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { closeBrowser, joinAll, launchChromium, openPerson, videoPlays } from './browser.js';
import { startServer } from './server.js';
const dir = mkdtempSync(path.join(os.tmpdir(), 'confab-try-'));
const server = await startServer({ dataDir: dir, logFile: '/tmp/try-server.log', args: ['--log', 'info,confab::media::adapt=trace,confab::media::bwe=trace'] });
const browser = await launchChromium();
const room = `t-${Math.random().toString(36).slice(2, 10)}`;
const people = [];
for (const n of ['Alice', 'Bob', 'Carol']) people.push(await openPerson(browser, n, `${server.url}/r/${room}`, [], { viewport: { width: 1600, height: 1000 } }));
const ids = await joinAll(people);
await videoPlays(people[2], ids[0]);
console.log(await people[2].page.evaluate(() => { const c = window.confab; return c.subscribePc.remoteDescription.sdp.split('\n').filter((l) => /extmap|rtcp-fb|^m=/.test(l)).join('\n') + '\nLOCAL\n' + c.subscribePc.localDescription.sdp.split('\n').filter((l) => /extmap|^m=/.test(l)).join('\n'); }));
for (let i = 0; i < 1; i++) {
  await new Promise((r) => setTimeout(r, 4000));
  const r = await (await fetch(`${server.url}/api/rooms/${room}`)).json();
  console.log(JSON.stringify(r.participants.map((p) => [p.name, p.receiving])));
}
const m = await (await fetch(`${server.url}/metrics`)).text();
console.log(m.split('\n').filter((l) => /estimate|probe|keyframe|paced|layer_sw/.test(l) && !l.startsWith('#')).join('\n'));
await closeBrowser(browser);
await server.stop();
