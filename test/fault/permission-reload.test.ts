/**
 * Permissions taken away while serving (a nats-server configuration reload):
 * /readyz stops saying ready and names what the server refuses, instead of a
 * ready process that no longer gets its frames.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLocalServer } from '../../broker/nats-server/local-server.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { brokerConfigCli } from '../helpers/nats-permissions.js';

describe('a permission revoked while serving', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-reload-'));
  const seed = (name: string) => join(dir, 'state', 'knats', `${name}.nk`);
  const fleet = new Fleet();

  before(async () => {
    const config = brokerConfigCli(['--agent', 'agA', '--frontend', 'fe1', '--state-dir', 'state'], dir);
    fleet.nats = await startLocalServer({ extraConfig: config });
  });
  after(async () => {
    await fleet.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("turns the frontend's /readyz to 503 naming its frame subscription", async () => {
    const frontend = await fleet.spawnFrontend(fleet.socketPath(), [
      '--server-id',
      'fe1',
      '--nats-nkey',
      seed('frontend-fe1'),
    ]);
    await fleet.spawnAgent(['--agent-id', 'agA', '--nats-nkey', seed('agent-agA')]);
    await eventually(async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200, 'ready');
    const { configPath, pid } = fleet.nats;
    const original = readFileSync(configPath, 'utf8');
    assert.ok(original.includes('"knats.fe.fe1.*", '), 'the frame subscription is granted');
    writeFileSync(configPath, original.replace('"knats.fe.fe1.*", ', ''));
    process.kill(pid, 'SIGHUP');
    const readyz = await eventually(async () => {
      const res = await fetchText(frontend.healthPort, '/readyz');
      return res.status === 503 && res;
    }, 'not ready after the revocation');
    assert.match(readyz.body, /knats\.fe\.fe1\.\*/);
  });
});
