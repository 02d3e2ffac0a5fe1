/**
 * A file named by a flag must exist and be readable; the error names the
 * flag, the path and why, so a mistyped mount is found at start.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { ErrorCode, KnatsError } from './errors.js';

export function assertReadableFile(flag: string, path: string): string {
  const fail = (why: string) => new KnatsError(ErrorCode.BadConfig, `${flag} ${path}: ${why}`);
  try {
    if (!statSync(path).isFile()) throw fail('not a regular file');
    accessSync(path, fsConstants.R_OK);
  } catch (err) {
    if (err instanceof KnatsError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : 'unreadable';
    throw fail(`cannot read it (${code ?? String(err)}: ${why})`);
  }
  return path;
}
