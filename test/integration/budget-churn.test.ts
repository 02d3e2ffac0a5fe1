/**
 * The shared receive budget of real processes under churn: a small budget
 * and window, CONNECT tunnels joining in waves while earlier ones are
 * starved, some clients reading slowly, some resetting mid-transfer, uploads
 * and downloads at once. Every completed tunnel is byte-exact, and once all
 * are gone both the frontend's and the agent's budget are back to exactly 0
 * with no tunnel left. The same through the gRPC door, whose clients leave by
 * closing their connection.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connectRequest, DoorClient } from '../helpers/connect-client.js';
import { randomBytesSeeded, sha256 } from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const KiB = 1024;
const credit = ['--receive-budget', String(512 * KiB), '--tunnel-window', String(256 * KiB)];
const DOWNLOAD = randomBytesSeeded(1024 * KiB, 13);
const UPLOAD = randomBytesSeeded(300 * KiB, 17);

interface Debuggable {
  debugState(): Record<string, unknown>;
}

/** Once every tunnel is gone: no tunnel left in any of the processes and every budget exactly 0. */
async function budgetsBackToZero(processes: readonly Debuggable[]): Promise<void> {
  const state = () =>
    processes.map((p) => {
      const { receiveBudgetInUse, tunnels } = p.debugState() as {
        receiveBudgetInUse: number;
        tunnels: number;
      };
      return { receiveBudgetInUse, tunnels };
    });
  try {
    await eventually(
      () => state().every((s) => s.receiveBudgetInUse === 0 && s.tunnels === 0),
      'budgets back to 0 and no tunnel left',
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}: ${JSON.stringify(state())}`);
  }
}

describe('receive budget of real processes under churn', () => {
  const fleet = new Fleet();
  const sockets = new Set<Socket>();
  // Sends DOWNLOAD, reads the whole upload, then ends (half-open until the client's FIN).
  const destination = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    socket.on('data', () => {});
    socket.on('end', () => socket.end());
    socket.write(DOWNLOAD);
  });
  let address = '';
  before(async () => {
    await fleet.startNats();
    destination.listen(0, '127.0.0.1');
    await once(destination, 'listening');
    address = `127.0.0.1:${(destination.address() as AddressInfo).port}`;
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    destination.close();
    await fleet.stop();
  });

  it('every byte of the tunnels that finish, and both budgets back to exactly 0', async () => {
    await fleet.agent(credit);
    const frontend = await fleet.frontend(['--mode', 'http-connect', ...credit]);
    const run = async (i: number): Promise<'complete' | 'reset'> => {
      await new Promise((r) => setTimeout(r, (i % 10) * 40));
      const client = await DoorClient.open({ path: frontend.uds });
      await client.write(connectRequest(address));
      assert.equal((await client.readHead()).status, 200);
      void client.write(UPLOAD).catch(() => {});
      if (i % 3 === 1) {
        // A slow reader: nothing taken for a while, the tunnel's window fills and stays full.
        client.socket.pause();
        await new Promise((r) => setTimeout(r, 800));
        client.socket.resume();
      }
      if (i % 3 === 2) {
        await client.readBytes(100 * KiB);
        client.close();
        return 'reset';
      }
      const got = await client.readBytes(DOWNLOAD.length, 60_000);
      assert.equal(sha256(got), sha256(DOWNLOAD), `tunnel ${i}: every byte in order`);
      client.socket.end();
      await client.readToEnd();
      return 'complete';
    };
    const outcomes = await Promise.all(Array.from({ length: 36 }, (_, i) => run(i)));
    assert.equal(outcomes.filter((o) => o === 'complete').length, 24);
    await budgetsBackToZero([...fleet.frontends, ...fleet.agents]);
  });

  it('the same through the gRPC door, clients closing their connection mid-download', async () => {
    await fleet.agent(credit);
    const frontend = await fleet.frontend(credit);
    const run = async (i: number): Promise<'complete' | 'left'> => {
      await new Promise((r) => setTimeout(r, (i % 10) * 40));
      const client = new ProxyStreamClient(`unix:${frontend.uds}`);
      try {
        const dial = await client.dial(address);
        assert.equal(dial.error, '');
        void client.sendAll(dial.connectID, UPLOAD).catch(() => {});
        if (i % 3 === 2) {
          await client.waitBytes(dial.connectID, 100 * KiB);
          return 'left';
        }
        await client.waitBytes(dial.connectID, DOWNLOAD.length);
        assert.equal(
          sha256(client.dataOf(dial.connectID)),
          sha256(DOWNLOAD),
          `tunnel ${i}: every byte in order`,
        );
        return 'complete';
      } finally {
        client.close();
      }
    };
    const outcomes = await Promise.all(Array.from({ length: 36 }, (_, i) => run(i)));
    assert.equal(outcomes.filter((o) => o === 'complete').length, 24);
    await budgetsBackToZero([...fleet.frontends, ...fleet.agents]);
  });
});
