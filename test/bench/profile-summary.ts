/**
 * Summarizes V8 .cpuprofile files (from `bench.js --cpu-prof DIR`): the top
 * functions by self time, and self time grouped by package, so a profile can
 * be quoted in a report without a flame graph viewer.
 *
 *   node dist/test/bench/profile-summary.js [--top N] FILE.cpuprofile...
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** Which package or layer a function belongs to. */
function groupOf(url: string, name: string): string {
  if (url === '') {
    if (name.startsWith('(')) return name; // (garbage collector), (idle), (program)
    return '(native)';
  }
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0]}`;
  const dist = url.indexOf('/dist/');
  if (dist >= 0) return `project:${url.slice(dist + 6).split('/')[0]}`;
  return url;
}

function label(frame: CallFrame): string {
  const name = frame.functionName || '(anonymous)';
  if (!frame.url) return name;
  const nm = frame.url.lastIndexOf('node_modules/');
  const dist = frame.url.indexOf('/dist/');
  const file =
    nm >= 0
      ? frame.url.slice(nm + 'node_modules/'.length)
      : dist >= 0
        ? frame.url.slice(dist + 6)
        : frame.url.replace(/^file:\/\//, '');
  return `${name} ${file}:${frame.lineNumber + 1}`;
}

function summarize(file: string, top: number): string {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const selfMicros = new Map<number, number>();
  if (profile.samples && profile.timeDeltas) {
    // Each sample's time is the delta to the next sample.
    for (let i = 0; i < profile.samples.length; i++) {
      const id = profile.samples[i]!;
      const dt = profile.timeDeltas[i + 1] ?? 0;
      selfMicros.set(id, (selfMicros.get(id) ?? 0) + Math.max(0, dt));
    }
  } else {
    const hits = profile.nodes.reduce((n, node) => n + (node.hitCount ?? 0), 0);
    const per = hits > 0 ? (profile.endTime - profile.startTime) / hits : 0;
    for (const node of profile.nodes) selfMicros.set(node.id, (node.hitCount ?? 0) * per);
  }
  const byFunction = new Map<string, number>();
  const byGroup = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const node of profile.nodes) {
    const us = selfMicros.get(node.id) ?? 0;
    if (us === 0) continue;
    total += us;
    if (node.callFrame.functionName === '(idle)') idle += us;
    const key = label(node.callFrame);
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
    const group = groupOf(node.callFrame.url, node.callFrame.functionName);
    byGroup.set(group, (byGroup.get(group) ?? 0) + us);
  }
  const busy = total - idle;
  const pct = (us: number) => `${((100 * us) / Math.max(1, busy)).toFixed(1).padStart(5)}%`;
  const lines = [
    `== ${path.basename(file)}: ${(total / 1e6).toFixed(1)} s profiled, ${(busy / 1e6).toFixed(1)} s busy (percentages of busy time)`,
    '-- self time by package/layer',
    ...[...byGroup.entries()]
      .filter(([g]) => g !== '(idle)')
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([g, us]) => `${pct(us)}  ${(us / 1000).toFixed(0).padStart(7)} ms  ${g}`),
    `-- top ${top} functions by self time`,
    ...[...byFunction.entries()]
      .filter(([f]) => !f.startsWith('(idle)'))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([f, us]) => `${pct(us)}  ${(us / 1000).toFixed(0).padStart(7)} ms  ${f}`),
  ];
  return lines.join('\n');
}

const args = process.argv.slice(2);
let top = 25;
const files: string[] = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--top') top = Number(args[++i]);
  else files.push(args[i]!);
}
if (files.length === 0) {
  process.stderr.write('usage: profile-summary.js [--top N] FILE.cpuprofile...\n');
  process.exit(2);
}
process.stdout.write(`${files.map((f) => summarize(f, top)).join('\n\n')}\n`);
