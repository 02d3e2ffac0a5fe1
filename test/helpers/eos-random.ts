/**
 * Seeded random cells for the end-of-stream run: doors, destination and
 * client behaviours, sizes, chunk sizes and pauses all drawn from one seed,
 * so a failing seed replays the same cell exactly.
 */
import { type Cell, CLIENTS, DESTINATIONS, DOORS } from './eos-scenarios.js';

/** mulberry32: a small, well-mixed 32-bit PRNG. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomCell(seed: number): Cell {
  const next = prng(seed);
  const pick = <V>(values: readonly V[]): V => values[Math.floor(next() * values.length)]!;
  // Sizes spread over orders of magnitude: empty, tiny, around one window, several windows.
  const size = (max: number) => (next() < 0.1 ? 0 : Math.floor(2 ** (next() * Math.log2(max))));
  const chunk = () => Math.max(1, size(128 * 1024));
  const uploadBytes = size(2 * 1024 * 1024);
  const downloadBytes = size(4 * 1024 * 1024);
  // At most a few thousand writes per direction, so a cell stays within seconds.
  const clientChunk = Math.max(chunk(), Math.ceil(uploadBytes / 4000));
  const destChunk = Math.max(chunk(), Math.ceil(downloadBytes / 4000));
  return {
    door: pick(DOORS),
    destination: pick(DESTINATIONS),
    client: pick(CLIENTS),
    uploadBytes,
    downloadBytes,
    seed,
    clientChunk,
    // Pauses only between big enough chunks, so a cell stays within seconds.
    clientPauseMs: clientChunk >= 16 * 1024 ? Math.floor(next() * 4) : 0,
    destChunk,
    destPauseMs: destChunk >= 16 * 1024 ? Math.floor(next() * 3) : 0,
  };
}
