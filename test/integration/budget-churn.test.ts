/**
 * The shared receive budget of real processes under churn: a small budget
 * and window, CONNECT tunnels joining in waves while earlier ones are
 * starved, some clients reading slowly, some resetting mid-transfer, uploads
 * and downloads at once. Every completed tunnel is byte-exact, and once all
 * are gone both the frontend's and the agent's budget are back to exactly 0
 * with no tunnel left.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connectRequest, DoorClient } from '../helpers/connect-client.js';
import { randomBytesSeeded, sha256 } from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';

const KiB = 1024;
const credit = ['--receive-budget', String(512 * KiB), '--tunnel-window', String(256 * KiB)];
const DOWNLOAD = randomBytesSeeded(1024 * KiB, 13);
const UPLOAD = randomBytesSeeded(300 * KiB, 17);

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
    const agent = await fleet.agent(credit);
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
    const state = () => ({
      frontend: frontend.debugState() as { receiveBudgetInUse: number; tunnels: number },
      agent: agent.debugState() as { receiveBudgetInUse: number; tunnels: number },
    });
    await eventually(
      () => {
        const s = state();
        return (
          s.frontend.receiveBudgetInUse === 0 &&
          s.agent.receiveBudgetInUse === 0 &&
          s.frontend.tunnels === 0 &&
          s.agent.tunnels === 0
        );
      },
      `budgets back to 0 and no tunnel left (${JSON.stringify(state())})`,
    );
  });
});
