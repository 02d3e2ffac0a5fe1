// A demo destination for docker-compose.yml: answers every request with one
// line naming itself and the peer that connected, which is the agent that
// carried the tunnel.
//   node deploy/demo-web.mjs NAME [PORT]
import { createServer } from 'node:http';

const name = process.argv[2] ?? 'web';
const port = Number(process.argv[3] ?? 8080);
let served = 0;

const server = createServer((req, res) => {
  served++;
  const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' });
  res.end(`${name}: ${req.method} ${req.url} #${served} from ${peer}\n`);
});
server.listen(port, () => console.log(`${name} listening on :${port}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
