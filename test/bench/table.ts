/** The bench's printed output: the rows table and the CPU-per-MiB table. */
import { CPU_TARGET, mapValues } from './bench-context.js';
import { type CpuRecord, MiB, type Row, textTable } from './common.js';

function formatValue(row: Row): string {
  if (row.value === null) return row.na ?? 'n/a';
  if (row.note) return row.note;
  return `${row.value} ${row.unit}`.trim();
}

export function formatTable(rows: Row[]): string {
  const header = ['scenario', 'figure', 'value', 'baseline (same run)', 'ratio', 'target', 'met'];
  const lines = rows.map((r) => [
    r.scenario,
    r.figure,
    formatValue(r),
    r.baseline ? `${r.baseline.name}: ${r.baseline.value} ${r.baseline.unit}`.trim() : '',
    r.ratio === undefined || r.ratio === null ? '' : `${r.ratio}x`,
    r.target ?? '',
    r.met === undefined || r.met === null
      ? r.target && r.value === null
        ? 'n/a'
        : ''
      : r.met
        ? 'yes'
        : 'NO',
  ]);
  return textTable(header, lines);
}

/** CPU ms per MiB moved by each process, per throughput transfer (e.g. "CONNECT tunnel down"), over all its rounds. */
export function cpuPerMiB(records: CpuRecord[]): Map<string, Record<string, number>> {
  const totals = new Map<string, { bytes: number; cpu: Record<string, number> }>();
  for (const r of records) {
    if (r.bytes === undefined || !r.what.startsWith('throughput')) continue;
    const key = r.what.replace(/^throughput /, '');
    const entry = totals.get(key) ?? { bytes: 0, cpu: {} };
    entry.bytes += r.bytes;
    for (const [k, s] of Object.entries(r.cpu)) entry.cpu[k] = (entry.cpu[k] ?? 0) + s;
    totals.set(key, entry);
  }
  return new Map(
    [...totals].map(([what, t]) => [what, mapValues(t.cpu, (s) => (s * 1000) / (t.bytes / MiB))]),
  );
}

/** The CPU table: every process's ms per MiB for each throughput transfer; idle processes left blank. */
export function formatCpu(records: CpuRecord[]): string {
  const perMiB = cpuPerMiB(records);
  if (perMiB.size === 0) return '';
  const cols = [
    'frontendGrpc',
    'frontendConnect',
    'agent',
    'natsServer',
    'tcpRelay',
    'grpcRelay',
    'load1',
    'load2',
  ];
  const header = ['CPU ms per MiB moved (all rounds, warm-up included)', ...cols];
  const lines = [...perMiB].map(([what, ms]) => [
    what,
    ...cols.map((c) => ((ms[c] ?? 0) < 0.1 ? '' : ms[c]!.toFixed(2))),
  ]);
  return (
    `${textTable(header, lines)}\ntarget: frontend and agent ${CPU_TARGET.text} each (the "CPU per MiB" rows above)\n` +
    'NATS relay floor: load1 reads a socket and publishes (sender), load2 receives and writes a socket (receiver)'
  );
}
