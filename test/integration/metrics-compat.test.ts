/**
 * The live /metrics of a frontend and an agent (real CLI processes on a real
 * nats-server) against upstream's metric list: upstream's names keep
 * upstream's type and label set, nothing invents an upstream name, and what
 * is ours sits under knats_ (beside process and Node.js default metrics).
 * promtool lints both pages.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  UPSTREAM_AGENT_METRICS,
  UPSTREAM_SERVER_METRICS,
  type UpstreamMetric,
} from '../fixtures/upstream-metrics.js';
import { type Destination, httpServer, refusedPort } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { promtool, promtoolMissing } from '../helpers/promtool.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** What ships under deploy/ and queries the series. */
const QUERYING_FILES = [
  'deploy/prometheus/knats-alerts.yaml',
  'deploy/prometheus/knats-alerts.test.yaml',
  'deploy/grafana/knats-dashboard.json',
];

/**
 * Series whose names break promtool's naming lint but are not ours to rename:
 * upstream's counter (existing dashboards query it by that name) and
 * prom-client's default Node.js gauges (as Node.js dashboards expect them).
 */
const LINT_EXCEPTIONS = new Set([
  'konnectivity_network_proxy_server_dial_failure_count',
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
]);

interface Family {
  type: string;
  /** Label names of every sample, sorted and joined (histograms without `le`). */
  labelSets: Set<string>;
  buckets: Set<number>;
}

/** Parses the text exposition format into metric families. */
function families(body: string): Map<string, Family> {
  const out = new Map<string, Family>();
  for (const line of body.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) out.set(type[1]!, { type: type[2]!, labelSets: new Set(), buckets: new Set() });
  }
  for (const line of body.split('\n')) {
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line);
    if (!sample) continue;
    const [, name, labelText = ''] = sample;
    const family =
      out.get(name!) ??
      out.get(name!.replace(/_(bucket|sum|count)$/, '')) ??
      assert.fail(`sample without a TYPE: ${line}`);
    const labels = [...labelText.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"/g)].map((m) => m[1]!);
    const le = /le="([^"]+)"/.exec(labelText);
    if (le && name!.endsWith('_bucket')) family.buckets.add(Number(le[1]));
    family.labelSets.add(
      labels
        .filter((l) => l !== 'le')
        .sort()
        .join(','),
    );
  }
  return out;
}

function checkAgainstUpstream(
  page: Map<string, Family>,
  upstream: readonly UpstreamMetric[],
  prefix: string,
): void {
  for (const metric of upstream) {
    const family = page.get(metric.name);
    if (metric.here !== 'exposed') {
      assert.equal(family, undefined, `${metric.name} is listed as absent (${metric.here.absent})`);
      continue;
    }
    assert.ok(family, `${metric.name} is exposed`);
    assert.equal(family.type, metric.type, `${metric.name} type`);
    // A labelled series shows no sample before its first event; every sample it shows has upstream's labels.
    const upstreamLabels = [...metric.labels].sort().join(',');
    for (const set of family.labelSets) assert.equal(set, upstreamLabels, `${metric.name} label set`);
    for (const le of metric.buckets ?? [])
      assert.ok(family.buckets.has(le), `${metric.name} has upstream's bucket le=${le}`);
  }
  const known = new Set(upstream.map((m) => m.name));
  for (const [name, family] of page) {
    if (name.startsWith('konnectivity_network_proxy_')) {
      assert.ok(name.startsWith(prefix) && known.has(name), `${name} is one of upstream's names`);
    } else {
      assert.match(name, /^(knats|process|nodejs)_/, `${name} is under our own prefix or a default metric's`);
    }
    for (const set of family.labelSets)
      assert.ok(!set.split(',').includes('role'), `${name} has no role label`);
  }
}

describe('metrics named as upstream', () => {
  const fleet = new Fleet();
  let web: Destination;
  const pages: { frontend: string; agent: string } = { frontend: '', agent: '' };
  before(async () => {
    await fleet.startNats();
    web = await httpServer('web');
    const uds = fleet.socketPath();
    const frontend = await fleet.spawnFrontend(uds);
    const agent = await fleet.spawnAgent();
    await eventually(
      async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200,
      'frontend ready',
    );
    // One tunnel and one failed dial, so the labelled series have children.
    const client = new ProxyStreamClient(`unix:${uds}`);
    const ok = await client.dial(web.address);
    assert.equal(ok.error, '');
    client.send(ok.connectID, Buffer.from('GET / HTTP/1.0\r\n\r\n'));
    await client.waitClosed(ok.connectID);
    const refused = await client.dial(`127.0.0.1:${await refusedPort()}`);
    assert.notEqual(refused.error, '');
    client.close();
    pages.frontend = (await fetchText(frontend.healthPort, '/metrics')).body;
    pages.agent = (await fetchText(agent.healthPort, '/metrics')).body;
  });
  after(async () => {
    await web.close();
    await fleet.stop();
  });

  it("the frontend's series are upstream proxy-server's where the meaning is", () => {
    const page = families(pages.frontend);
    checkAgainstUpstream(page, UPSTREAM_SERVER_METRICS, 'konnectivity_network_proxy_server_');
    assert.ok(page.has('knats_bus_connected') && page.has('process_cpu_user_seconds_total'));
    assert.match(pages.frontend, /^knats_receive_budget_capacity_bytes [1-9]\d*$/m);
    assert.ok(page.has('nodejs_eventloop_lag_seconds'));
  });

  it("the agent's series are upstream proxy-agent's where the meaning is", () => {
    const page = families(pages.agent);
    checkAgainstUpstream(page, UPSTREAM_AGENT_METRICS, 'konnectivity_network_proxy_agent_');
    assert.ok(page.has('knats_bus_connected') && page.has('process_resident_memory_bytes'));
  });

  it('the shipped alert rules and dashboard query only series a frontend or an agent exposes', () => {
    const exposed = new Map([...families(pages.frontend), ...families(pages.agent)]);
    for (const file of QUERYING_FILES) {
      const text = readFileSync(join(ROOT, file), 'utf8');
      const names = new Set(text.match(/\b(konnectivity_network_proxy|knats|process|nodejs)_[a-z0-9_]+/g));
      assert.ok(names.size > 0, file);
      for (const name of names) {
        const histogram = exposed.get(name.replace(/_(bucket|sum|count)$/, ''));
        assert.ok(exposed.has(name) || histogram?.type === 'histogram', `${file}: ${name} is exposed`);
      }
    }
  });

  it('promtool check metrics finds nothing but names fixed elsewhere', { skip: promtoolMissing }, () => {
    for (const [role, body] of Object.entries(pages)) {
      const { status, output } = promtool(['check', 'metrics'], body);
      // Exit 1 is a page promtool cannot parse; 3 is lint findings, each checked below.
      assert.ok(status === 0 || status === 3, `${role}: promtool exit ${status}:\n${output}`);
      for (const finding of output.split('\n').filter((l) => l.trim() !== '')) {
        const name = finding.split(' ')[0]!;
        assert.ok(LINT_EXCEPTIONS.has(name), `${role}: ${finding}`);
      }
    }
  });
});
