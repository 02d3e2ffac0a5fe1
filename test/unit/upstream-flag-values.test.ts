/**
 * Values upstream's proxy-server and proxy-agent v0.36 accept for flags that
 * are kept here, as a platform team's manifests carry them: ids that are node
 * names or addresses (--agent-id, --server-id, PROXY_AGENT_ID, PROXY_SERVER_ID
 * are free strings upstream: a uuid by default, often a node name), upstream's
 * own default of --backend-dial-timeout (0: no timeout), and the documented
 * precedence of the command line over KNATS_* variables for the log level.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { idOfToken, idToken, isToken } from '../../broker/wire/subjects.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { runCli } from '../helpers/fleet.js';

const NATS = ['--nats-url', 'nats://127.0.0.1:4222'];
const FRONTEND_BASE = [...NATS, '--uds-name', '/tmp/knats-upstream-values.sock'];

describe('values upstream accepts for kept flags', () => {
  it('agent ids that are node names or addresses, as flag or PROXY_AGENT_ID', () => {
    for (const id of ['ip-10-0-1-23.ec2.internal', 'node1.mydomain.com', '10.0.0.5']) {
      assert.doesNotThrow(() => agentConfig([...NATS, `--agent-id=${id}`], {}), `--agent-id=${id}`);
      assert.doesNotThrow(() => agentConfig(NATS, { PROXY_AGENT_ID: id }), `PROXY_AGENT_ID=${id}`);
    }
  });

  it('two agents whose ids differ only by a dot stay two agents on the bus', () => {
    const a = agentConfig([...NATS, '--agent-id=node-1.a'], {}).config.id;
    const b = agentConfig([...NATS, '--agent-id=node-1_a'], {}).config.id;
    assert.notEqual(a, b);
  });

  it('ids become subject tokens one to one: plain ids unchanged, others escaped and read back', () => {
    const ids = [
      'plain-id_1',
      'ip-10-0-1-23.ec2.internal',
      '10.0.0.5',
      'a.b',
      'a_b',
      'a~2eb',
      'ü x',
      '日本',
      '*',
      '>',
    ];
    const tokens = ids.map(idToken);
    assert.equal(new Set(tokens).size, ids.length, 'no two ids share a token');
    assert.equal(idToken('plain-id_1'), 'plain-id_1');
    assert.equal(idToken('ip-10-0-1-23.ec2.internal'), 'ip-10-0-1-23~2eec2~2einternal');
    for (const [i, token] of tokens.entries()) {
      assert.ok(isToken(token), token);
      assert.equal(idOfToken(token), ids[i]);
    }
    assert.equal(agentConfig([...NATS, '--agent-id=10.0.0.5'], {}).config.id, '10~2e0~2e0~2e5');
  });

  it('server ids that are node names, as flag or PROXY_SERVER_ID', () => {
    const id = 'cp-1.example.com';
    assert.doesNotThrow(() => frontendConfig([...FRONTEND_BASE, `--server-id=${id}`], {}));
    assert.doesNotThrow(() => frontendConfig(FRONTEND_BASE, { PROXY_SERVER_ID: id }));
  });

  it("--backend-dial-timeout=0, upstream's default (no timeout), starts", () => {
    assert.doesNotThrow(() => frontendConfig([...FRONTEND_BASE, '--backend-dial-timeout=0'], {}));
  });

  it('--v on the command line wins over KNATS_LOG_LEVEL in the environment (the command line wins)', () => {
    const { logging } = frontendConfig([...FRONTEND_BASE, '--v=4'], { KNATS_LOG_LEVEL: 'info' });
    assert.equal(logging.level, 'debug');
  });
});

describe('a log file that cannot be written is a bad flag, named, exit 2 (klog exits too)', () => {
  it('--log-file in a folder that does not exist', async () => {
    const run = await runCli([
      'frontend',
      ...FRONTEND_BASE,
      '--logtostderr=false',
      '--log-file=/nonexistent/knats/x.log',
      '--health-port=0',
      '--admin-port=0',
    ]);
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /--log-file/);
  });
});
