/**
 * The benchmark is not a test, but its --quick mode runs here once so it
 * cannot rot: it must finish and produce a number for every figure. No
 * timing is asserted (this machine is shared; figures are noisy).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type BenchResult, CONNECT_NA, SCENARIOS } from './common.js';

const benchPath = path.join(path.dirname(fileURLToPath(import.meta.url)), 'bench.js');

function runQuick(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [benchPath, '--quick', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      child.kill('SIGINT'); // the bench stops its children on SIGINT
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
      reject(new Error(`bench --quick did not finish within 120 s\n${stderr.slice(-4000)}`));
    }, 120_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

it('npm run bench -- --quick --json completes and reports every figure', { timeout: 150_000 }, async () => {
  const { code, stdout, stderr } = await runQuick();
  let result: BenchResult;
  try {
    result = JSON.parse(stdout) as BenchResult;
  } catch {
    assert.fail(`bench did not print JSON (exit ${code}):\n${stdout.slice(0, 2000)}\n${stderr.slice(-4000)}`);
  }
  assert.deepEqual(result.errors, [], `bench reported errors:\n${result.errors.join('\n')}`);
  assert.equal(code, 0, `bench exited with ${code}\n${stderr.slice(-4000)}`);
  assert.equal(result.mode, 'quick');
  assert.deepEqual(result.scenarios, [...SCENARIOS]);

  for (const scenario of SCENARIOS) {
    const rows = result.rows.filter((r) => r.scenario === scenario);
    assert.ok(rows.length > 0, `scenario ${scenario} produced no figures`);
    for (const row of rows) {
      const connectRow = /CONNECT/.test(row.figure);
      if (row.value === null) {
        // Only the HTTP CONNECT rows may be missing, and only while the frontend has no such mode.
        assert.ok(connectRow, `${scenario}: "${row.figure}" has no value (${row.na})`);
        assert.equal(row.na, CONNECT_NA, `${scenario}: "${row.figure}": ${row.na}`);
        assert.equal(result.connect.available, false);
        continue;
      }
      assert.equal(typeof row.value, 'number', `${scenario}: "${row.figure}"`);
      assert.ok(Number.isFinite(row.value), `${scenario}: "${row.figure}" is ${row.value}`);
      if (row.baseline) {
        assert.ok(
          typeof row.baseline.value === 'number' && Number.isFinite(row.baseline.value),
          `${scenario}: "${row.figure}" baseline ${row.baseline.name} is ${row.baseline.value}`,
        );
      }
    }
  }
  // The figures the issue names are all there.
  const figures = result.rows.map((r) => r.figure).join('\n');
  for (const wanted of [
    /direct TCP upload/,
    /TCP relay hop download/,
    /CEILING/,
    /raw NATS \d+\+5 B frames \(this project's\)/,
    /gRPC tunnel upload/,
    /gRPC tunnel download/,
    /HTTP CONNECT tunnel upload/,
    /HTTP CONNECT tunnel download/,
    /gRPC tunnel RTT overhead p50/,
    /gRPC tunnel RTT overhead p99\b/,
    /gRPC tunnel RTT overhead p99\.9/,
    /gRPC tunnel dial p50/,
    /gRPC tunnel dial p99/,
    /gRPC tunnel dials\/s/,
    /idle gRPC tunnel RSS, frontend/,
    /idle gRPC tunnel RSS, agent/,
    /idle HTTP CONNECT tunnel RSS, frontend/,
    /active gRPC x 1 MiB: aggregate/,
    /active gRPC: slowest\/fastest/,
    /gRPC: \d+ tunnels RTT p99 beside a stuck tunnel/,
    /frontend RSS after \d+ dial\/close cycles/,
    // Issue 13: the floors and the figures measured against them.
    /round-trip floor p50 \(baseline\)/,
    /round-trip floor p99 \(baseline\)/,
    /HTTP CONNECT tunnel RTT overhead p50 vs floor/,
    /HTTP CONNECT tunnel RTT overhead p99 vs floor/,
    /dial floor p50 \(baseline\)/,
    /dial floor p99 \(baseline\)/,
    /gRPC dial on a ready connection .* p50 vs floor/,
    /gRPC dial on a ready connection .* p99 vs floor/,
    /CPU per MiB, gRPC tunnel download, frontend/,
    /CPU per MiB, gRPC tunnel download, agent/,
    /CPU per MiB, HTTP CONNECT tunnel download, frontend/,
    /CPU per MiB, HTTP CONNECT tunnel download, agent/,
    /active CONNECT x 1 MiB: aggregate vs one tunnel/,
  ]) {
    assert.match(figures, wanted);
  }
  for (const row of result.rows.filter((r) => /vs floor|CPU per MiB|vs one tunnel/.test(r.figure))) {
    if (row.value === null) continue;
    assert.ok(row.target === undefined || typeof row.met === 'boolean', `"${row.figure}" has no verdict`);
  }
  // The dial stage table: whatever stages the frontends export, or none.
  const stages = result.dialStages;
  assert.ok(stages, 'no dialStages in the JSON');
  assert.equal(typeof stages.found, 'boolean');
  if (!stages.found) assert.deepEqual(stages.stages, []);
  for (const s of stages.stages) {
    assert.ok(s.door !== '' && s.stage !== '', `stage without labels: ${JSON.stringify(s)}`);
    assert.ok(Number.isInteger(s.count) && s.count >= 0, `${s.door} ${s.stage}: count ${s.count}`);
    if (s.count > 0) {
      for (const v of [s.meanMs, s.p50Ms, s.p99Ms]) {
        assert.ok(typeof v === 'number' && Number.isFinite(v), `${s.door} ${s.stage}: ${JSON.stringify(s)}`);
      }
    }
  }
});
