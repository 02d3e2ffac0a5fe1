/**
 * The Go konnectivity-client's dial race (v0.36.0): its receive loop hands
 * DIAL_RSP to the dialing goroutine and reads on at once, and the dialing
 * goroutine registers the connection only when it gets to run; a DATA that
 * arrives in the same read as the DIAL_RSP finds no connection and is
 * dropped ("Connection not recognized"), and the application's first read
 * is short. With a destination that speaks first, the frontend must not put
 * the first DATA right behind the DIAL_RSP. GoClientModel reproduces that
 * receive loop; every dial here must get its banner whole.
 *
 * For measurements: KNATS_RACE_DIALS (dials), KNATS_RACE_STREAMS (client
 * streams dialing at once) and KNATS_RACE_SETTLE_MS (the door's settle time).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { RunningFrontend } from '../../frontend/frontend.js';
import { bannerServer, closingServer, type Destination, echoServer } from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { GoClientModel } from '../helpers/go-client-model.js';

const DIALS = Number(process.env.KNATS_RACE_DIALS ?? 3000);
/** Client streams dialing at once, each one dial after another. */
const STREAMS = Number(process.env.KNATS_RACE_STREAMS ?? 32);
/** --dial-response-settle of the frontend under test (its default unless KNATS_RACE_SETTLE_MS says). */
const SETTLE_FLAGS = process.env.KNATS_RACE_SETTLE_MS
  ? ['--dial-response-settle', `${process.env.KNATS_RACE_SETTLE_MS}ms`]
  : [];
const BANNER = Buffer.from('220 race.example ESMTP ready; a destination that speaks first\r\n');

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? Number.NaN;
}

describe('end of stream: DIAL_RSP then a speak-first destination, against the Go client receive loop', () => {
  const fleet = new Fleet();
  let frontend: RunningFrontend & { uds: string };
  /** The same door with a settle time far beyond any test's patience. */
  let patient: RunningFrontend & { uds: string };
  let banner: Destination;
  let echo: Destination;
  let closes: Destination;

  before(async () => {
    await fleet.startNats();
    await fleet.agent();
    frontend = await fleet.frontend(['--mode', 'grpc', ...SETTLE_FLAGS]);
    patient = await fleet.frontend(['--mode', 'grpc', '--dial-response-settle', '2s']);
    banner = await bannerServer(BANNER);
    echo = await echoServer();
    // Accepts and closes at once: the agent's answer and its FIN come back to back.
    closes = await closingServer();
    for (const door of [frontend, patient]) {
      await eventually(
        () => (door.debugState() as { agentsTakingDials: number }).agentsTakingDials > 0,
        'agent known',
      );
    }
  });
  after(async () => {
    await banner?.close();
    await echo?.close();
    await closes?.close();
    await fleet.stop();
  });

  it(`${DIALS} dials of a speak-first destination: no first DATA dropped`, async () => {
    const failures: string[] = [];
    const firstByteMs: number[] = [];
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: STREAMS }, async () => {
        const client = new GoClientModel(`unix://${frontend.uds}`);
        try {
          while (next < DIALS) {
            next++;
            const dial = await client.dial(banner.address);
            if (dial.error || !dial.connection) {
              failures.push(`dial failed: ${dial.error}`);
              continue;
            }
            await GoClientModel.waitFor(dial.connection, BANNER.length);
            const got = Buffer.concat(dial.connection.chunks);
            const dropped = client.droppedData.get(dial.connectID) ?? 0;
            if (dropped > 0 || !got.subarray(0, BANNER.length).equals(BANNER)) {
              failures.push(
                `connectID ${dial.connectID}: ${dropped} DATA dropped as not recognized, first read ${JSON.stringify(got.subarray(0, 16).toString())}`,
              );
            } else {
              firstByteMs.push(dial.connection.firstDataAt! - dial.answeredAt);
            }
            if (dial.connection.closeError === undefined) client.stream.closeRequest(dial.connectID);
          }
        } finally {
          client.close();
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    firstByteMs.sort((a, b) => a - b);
    console.log(
      `# dial race: ${DIALS} dials in ${seconds.toFixed(1)} s, ${failures.length} lost their first DATA; ` +
        `first DATA after DIAL_RSP p50 ${percentile(firstByteMs, 50).toFixed(2)} ms, p99 ${percentile(firstByteMs, 99).toFixed(2)} ms`,
    );
    assert.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${DIALS} dials lost their first DATA`);
    await eventually(
      () => (frontend.debugState() as { tunnels: number }).tunnels === 0,
      'every tunnel closed',
      15_000,
    );
  });

  it('a destination that accepts and closes at once: every CLOSE_RSP reaches a registered connection', async () => {
    const client = new GoClientModel(`unix://${frontend.uds}`);
    try {
      for (let i = 0; i < 300; i++) {
        const dial = await client.dial(closes.address);
        assert.equal(dial.error, '');
        await GoClientModel.waitFor(dial.connection!, 1, 5_000);
        assert.equal(dial.connection!.closeError, '', `connectID ${dial.connectID} closed cleanly`);
      }
      assert.deepEqual(
        [...client.droppedCloses.keys()],
        [],
        'no CLOSE_RSP before its connection was registered',
      );
    } finally {
      client.close();
    }
  });

  it('a client that speaks first (TLS) does not wait for the settle time', async () => {
    const client = new GoClientModel(`unix://${patient.uds}`);
    try {
      for (let i = 0; i < 5; i++) {
        const dial = await client.dial(echo.address);
        assert.equal(dial.error, '');
        const sentAt = performance.now();
        client.stream.send(dial.connectID, Buffer.from('client hello'));
        await GoClientModel.waitFor(dial.connection!, 12, 5_000);
        const ms = performance.now() - sentAt;
        assert.ok(ms < 1_000, `the echo came back after ${ms.toFixed(1)} ms, not after the settle time`);
        client.stream.closeRequest(dial.connectID);
      }
    } finally {
      client.close();
    }
  });
});
