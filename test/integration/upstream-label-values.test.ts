/**
 * Upstream's series keep upstream's label values where the meaning is
 * upstream's, so dashboards and alerts that select a reason keep matching
 * (apiserver-network-proxy v0.36.0: pkg/server/metrics DialFailureReason,
 * pkg/agent/metrics DialFailureReason). A destination that refuses a dial is
 * upstream proxy-server's `error_response` (the agent answered with an
 * error); a dial the agent gives up on is upstream proxy-agent's `timeout`,
 * and any other failed endpoint dial its `unknown`. A dial that failed opened
 * no tunnel, so our own close counter does not count it as a clean close.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { hangingPort, refusedPort } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

/** upstream pkg/server/metrics/metrics.go, DialFailureReason. */
const UPSTREAM_SERVER_DIAL_FAILURE_REASONS = [
  'no_agent',
  'error_response',
  'unrecognized_response',
  'send_rsp',
  'backend_close',
  'backend_dial_timeout',
  'frontend_close',
];
/** upstream pkg/agent/metrics/metrics.go, DialFailureReason. */
const UPSTREAM_AGENT_DIAL_FAILURE_REASONS = ['timeout', 'unknown'];

function reasons(page: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of page.matchAll(new RegExp(`^${name}\\{reason="([^"]*)"\\} (\\S+)$`, 'gm'))) {
    out.set(m[1]!, Number(m[2]));
  }
  return out;
}

describe("upstream's dial failure reasons on upstream's series", () => {
  const fleet = new Fleet();
  let hanging: { port: number; close(): void };
  const pages = { frontend: '', agent: '' };

  before(async () => {
    await fleet.startNats();
    hanging = await hangingPort();
    const uds = fleet.socketPath();
    const frontend = await fleet.spawnFrontend(uds);
    const agent = await fleet.spawnAgent(['--dial-timeout', '500ms']);
    await eventually(async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200, 'ready');
    const client = new ProxyStreamClient(`unix:${uds}`);
    const refused = await client.dial(`127.0.0.1:${await refusedPort()}`);
    assert.notEqual(refused.error, '');
    const timedOut = await client.dial(`127.0.0.1:${hanging.port}`);
    assert.notEqual(timedOut.error, '');
    client.close();
    pages.frontend = (await fetchText(frontend.healthPort, '/metrics')).body;
    pages.agent = (await fetchText(agent.healthPort, '/metrics')).body;
  });
  after(async () => {
    hanging.close();
    await fleet.stop();
  });

  it("the frontend counts a refused destination as upstream's error_response", () => {
    const counted = reasons(pages.frontend, 'konnectivity_network_proxy_server_dial_failure_count');
    for (const reason of counted.keys()) {
      assert.ok(
        UPSTREAM_SERVER_DIAL_FAILURE_REASONS.includes(reason),
        `reason="${reason}" is not one of upstream proxy-server's (${UPSTREAM_SERVER_DIAL_FAILURE_REASONS.join(', ')})`,
      );
    }
    assert.ok((counted.get('error_response') ?? 0) >= 1, 'the refused dial is an error_response');
  });

  it("the agent counts its endpoint dial failures as upstream's timeout and unknown", () => {
    const counted = reasons(pages.agent, 'konnectivity_network_proxy_agent_endpoint_dial_failure_total');
    for (const reason of counted.keys()) {
      assert.ok(
        UPSTREAM_AGENT_DIAL_FAILURE_REASONS.includes(reason),
        `reason="${reason}" is not one of upstream proxy-agent's (${UPSTREAM_AGENT_DIAL_FAILURE_REASONS.join(', ')})`,
      );
    }
    assert.equal(counted.get('timeout'), 1, 'the dial to the hanging port timed out');
    assert.equal(counted.get('unknown'), 1, 'the refused dial');
  });

  it('dials that failed are not counted as tunnels closed ok (knats_tunnels_closed_total)', () => {
    // Both dials above failed: no tunnel opened, so none closed cleanly.
    for (const [role, page] of Object.entries(pages)) {
      const ok = /^knats_tunnels_closed_total\{reason="ok"\} (\S+)$/m.exec(page);
      assert.equal(Number(ok?.[1] ?? 0), 0, `${role}: ${ok?.[0]}`);
    }
  });
});
