/**
 * Run as a process: `node otel-probe.js [flag ...]` starts a nats-server, a
 * frontend and an agent (in-process, both given the flags), carries one
 * tunnel through them, and prints on stdout, as JSON, which @opentelemetry
 * packages this process loaded. Its own process, so nothing another test
 * loaded counts.
 */
import { createRequire } from 'node:module';
import { sep } from 'node:path';
import { echoServer } from './destinations.js';
import { eventually, Fleet, fetchText } from './fleet.js';
import { ProxyStreamClient } from './proxy-client.js';

const flags = process.argv.slice(2);
const fleet = new Fleet();
const echo = await echoServer();
try {
  await fleet.startNats();
  const frontend = await fleet.frontend(flags);
  await fleet.agent(flags);
  await eventually(async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200, 'readyz');
  const client = new ProxyStreamClient(`unix:${frontend.uds}`);
  const dial = await client.dial(echo.address);
  if (dial.error) throw new Error(`dial failed: ${dial.error}`);
  client.send(dial.connectID, Buffer.from('ping'));
  await eventually(() => client.dataOf(dial.connectID).length === 4, 'echo');
  client.closeRequest(dial.connectID);
  await client.waitClosed(dial.connectID);
  client.close();
} finally {
  await echo.close();
  await fleet.stop();
}
const marker = `${sep}node_modules${sep}@opentelemetry${sep}`;
const packages = new Set<string>();
for (const file of Object.keys(createRequire(import.meta.url).cache)) {
  const at = file.lastIndexOf(marker);
  if (at >= 0) packages.add(`@opentelemetry/${file.slice(at + marker.length).split(sep)[0]}`);
}
process.stdout.write(`${JSON.stringify({ packages: [...packages].sort() })}\n`);
