/**
 * Upstream's HTTP endpoints (apiserver-network-proxy v0.36.0,
 * cmd/server/app/server.go and cmd/agent/app/server.go): the health port
 * serves /healthz, /readyz and /ready (the same readiness handler) and
 * /metrics; probes and scrape configurations written for proxy-server and
 * proxy-agent keep working.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';

describe("upstream's health endpoints", () => {
  const fleet = new Fleet();
  const health = { frontend: 0, agent: 0 };

  before(async () => {
    await fleet.startNats();
    health.frontend = (await fleet.spawnFrontend(fleet.socketPath())).healthPort;
    health.agent = (await fleet.spawnAgent()).healthPort;
    await eventually(async () => (await fetchText(health.frontend, '/readyz')).status === 200, 'ready');
  });
  after(() => fleet.stop());

  for (const role of ['frontend', 'agent'] as const) {
    it(`${role}: /ready answers as /readyz does`, async () => {
      const readyz = await fetchText(health[role], '/readyz');
      const ready = await fetchText(health[role], '/ready');
      assert.equal(readyz.status, 200);
      assert.equal(ready.status, readyz.status, '/ready');
    });
  }
});
