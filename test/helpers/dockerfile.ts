/**
 * The image: what the Dockerfile's final stage runs and where it copies repo files.
 */
import { posix } from 'node:path';

interface ImageSpec {
  readonly entrypoint: string[];
  readonly cmd: string[];
  readonly user: string | undefined;
  /** Container folder -> repository folder. */
  readonly copies: { readonly dest: string; readonly src: string }[];
  readonly stages: { readonly from: string; readonly lines: string[] }[];
}

export function parseDockerfile(source: string): ImageSpec {
  const lines = source
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const stages: { from: string; lines: string[] }[] = [];
  for (const line of lines) {
    const [instruction = '', ...rest] = line.split(/\s+/);
    if (instruction.toUpperCase() === 'FROM') stages.push({ from: rest[0] ?? '', lines: [] });
    else stages[stages.length - 1]?.lines.push(line);
  }
  const final = stages[stages.length - 1] ?? { from: '', lines: [] };
  let workdir = '/';
  let entrypoint: string[] = [];
  let cmd: string[] = [];
  let user: string | undefined;
  const copies: { dest: string; src: string }[] = [];
  for (const line of final.lines) {
    const [instruction = '', ...words] = line.split(/\s+/);
    const argument = line.slice(instruction.length).trim();
    switch (instruction.toUpperCase()) {
      case 'WORKDIR':
        workdir = posix.resolve(workdir, argument);
        break;
      case 'ENTRYPOINT':
        entrypoint = JSON.parse(argument) as string[];
        cmd = [];
        break;
      case 'CMD':
        cmd = JSON.parse(argument) as string[];
        break;
      case 'USER':
        user = argument;
        break;
      case 'COPY': {
        if (words.some((w) => w.startsWith('--from'))) break;
        const paths = words.filter((w) => !w.startsWith('--'));
        const dest = posix.resolve(workdir, paths[paths.length - 1] ?? '.');
        for (const src of paths.slice(0, -1)) copies.push({ dest, src: src.replace(/\/$/, '') });
        break;
      }
    }
  }
  return { entrypoint, cmd, user, copies, stages };
}
