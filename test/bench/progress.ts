/** The bench's progress lines on stderr: one rewritten line on a terminal, one line each otherwise. */
import { performance } from 'node:perf_hooks';

/** When the bench started (performance.now()). */
export const startedAt = performance.now();
let lastProgressLength = 0;

export function progress(text: string): void {
  const line = `[${((performance.now() - startedAt) / 1000).toFixed(0).padStart(3)} s] ${text}`;
  if (process.stderr.isTTY) {
    const pad = Math.max(0, lastProgressLength - line.length);
    process.stderr.write(`\r${line}${' '.repeat(pad)}`);
    lastProgressLength = line.length;
  } else {
    process.stderr.write(`${line}\n`);
  }
}

export function progressDone(): void {
  if (process.stderr.isTTY && lastProgressLength > 0) process.stderr.write('\n');
  lastProgressLength = 0;
}
