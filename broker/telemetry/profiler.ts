/**
 * On-demand profiles for --enable-profiling, served on the admin port where
 * upstream serves Go's pprof: a CPU profile over some seconds (the
 * .cpuprofile JSON that Chrome DevTools and speedscope open) through an
 * in-process inspector session, and a V8 heap snapshot (.heapsnapshot).
 * One CPU profile at a time: V8 has one sampling profiler per isolate.
 */
import { Session } from 'node:inspector/promises';
import type { Readable } from 'node:stream';
import { getHeapSnapshot } from 'node:v8';

let profiling = false;

/** True while a CPU profile is being taken (a second one is refused). */
export function cpuProfileRunning(): boolean {
  return profiling;
}

export async function takeCpuProfile(durationMs: number): Promise<string> {
  if (profiling) throw new Error('a CPU profile is already being taken');
  profiling = true;
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
    await new Promise((resolve) => setTimeout(resolve, durationMs));
    const { profile } = await session.post('Profiler.stop');
    return JSON.stringify(profile);
  } finally {
    session.disconnect();
    profiling = false;
  }
}

/** The heap as V8 sees it now; the process pauses while the snapshot is written. */
export function heapSnapshot(): Readable {
  return getHeapSnapshot();
}
