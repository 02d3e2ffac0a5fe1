/**
 * The alert rules that ship under deploy/prometheus: promtool checks them and
 * runs their unit tests (input series, expected alerts). The Grafana dashboard
 * beside them is well-formed. That both query only series the processes expose
 * is checked against live pages in metrics-compat.test.ts.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promtool, promtoolMissing } from '../helpers/promtool.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const ALERT_RULES = join(ROOT, 'deploy/prometheus/knats-alerts.yaml');
const ALERT_RULES_TEST = join(ROOT, 'deploy/prometheus/knats-alerts.test.yaml');
const DASHBOARD = join(ROOT, 'deploy/grafana/knats-dashboard.json');

describe('shipped alert rules and dashboard', () => {
  it('promtool check rules accepts the rules', { skip: promtoolMissing }, () => {
    const { status, output } = promtool(['check', 'rules', ALERT_RULES]);
    assert.equal(status, 0, output);
    assert.match(output, /SUCCESS: 8 rules found/);
  });

  it('promtool test rules: each alert fires on its fault and not on a healthy fleet', {
    skip: promtoolMissing,
  }, () => {
    const { status, output } = promtool(['test', 'rules', ALERT_RULES_TEST]);
    assert.equal(status, 0, output);
    // Every rule is exercised by at least one expected firing.
    const rules = [...readFileSync(ALERT_RULES, 'utf8').matchAll(/^\s*- alert: (\w+)/gm)].map((m) => m[1]);
    const tests = readFileSync(ALERT_RULES_TEST, 'utf8');
    for (const rule of rules) {
      assert.match(
        tests,
        new RegExp(`alertname: ${rule}\\n\\s+exp_alerts:\\n\\s+- exp_labels`),
        `${rule} is seen firing`,
      );
    }
  });

  it('the dashboard is Grafana JSON with a Prometheus data source variable and unique panel ids', () => {
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
      uid: string;
      templating: { list: { name: string; type: string }[] };
      panels: { id: number; type: string; targets?: { expr: string }[] }[];
    };
    assert.ok(dashboard.uid);
    assert.ok(dashboard.templating.list.some((v) => v.name === 'datasource' && v.type === 'datasource'));
    const ids = dashboard.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length);
    assert.ok(
      dashboard.panels.filter((p) => p.type === 'timeseries').every((p) => (p.targets?.length ?? 0) > 0),
    );
  });
});
