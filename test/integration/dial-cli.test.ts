import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Destination, httpServer } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText, runCli } from '../helpers/fleet.js';

/** Runs `knats dial` with `input` on stdin. */
const dial = (args: string[], input: string) => runCli(['dial', ...args], { input });

describe('knats dial, the test client', () => {
  const fleet = new Fleet();
  let web: Destination;
  let grpcUds: string;
  let connectUds: string;

  before(async () => {
    await fleet.startNats();
    const grpc = await fleet.frontend();
    const connect = await fleet.frontend(['--mode', 'http-connect']);
    grpcUds = grpc.uds;
    connectUds = connect.uds;
    await fleet.agent();
    web = await httpServer('web');
    for (const fe of [grpc, connect]) {
      await eventually(async () => (await fetchText(fe.healthPort, '/readyz')).status === 200, 'ready');
    }
  });
  after(async () => {
    await web.close();
    await fleet.stop();
  });

  for (const mode of ['grpc', 'http-connect']) {
    it(`fetches a page through a ${mode} frontend, stdin to the destination and its answer to stdout`, async () => {
      const uds = mode === 'grpc' ? grpcUds : connectUds;
      const result = await dial(
        ['--mode', mode, '--uds-name', uds, web.address],
        'GET /via-dial HTTP/1.0\r\n\r\n',
      );
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /^HTTP\/1\.1 200 OK/);
      assert.ok(result.stdout.endsWith('web /via-dial'), result.stdout);
    });
  }

  it('fails with the reason when the dial fails', async () => {
    const grpcResult = await dial(['--uds-name', grpcUds, '127.0.0.1:1'], '');
    assert.equal(grpcResult.code, 1);
    assert.match(grpcResult.stderr, /KNATS_DIAL_REFUSED/);
    const connectResult = await dial(['--mode', 'http-connect', '--uds-name', connectUds, '127.0.0.1:1'], '');
    assert.equal(connectResult.code, 1);
    assert.match(connectResult.stderr, /502/);
  });

  it('rejects a bad mode with exit status 2', async () => {
    const result = await dial(['--mode', 'socks', '--uds-name', grpcUds, web.address], '');
    assert.equal(result.code, 2);
    assert.match(result.stderr, /--mode: must be grpc or http-connect/);
  });
});
