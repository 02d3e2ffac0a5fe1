/**
 * Upstream's logging flags (klog's, which proxy-server and proxy-agent expose
 * with dashes for underscores) mapped onto our JSON logger: verbosity to a
 * level, klog's file and stderr routing to LogSettings. --log-level stays
 * the native flag; --v is the upstream spelling of the same choice.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { LogLevel, LogSettings } from '../broker/logging.js';
import type { FlagReader, FlagSpec } from './flags.js';

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export const logLevelFlag: FlagSpec = {
  name: 'log-level',
  kind: 'string',
  default: 'info',
  help: `log level (${LOG_LEVELS.join(', ')})`,
  placeholder: 'LEVEL',
};

const HEADER_FLAGS = 'one JSON record per line (no klog text header to shape)';

export const klogFlags: FlagSpec[] = [
  {
    name: 'v',
    kind: 'int',
    help: 'klog verbosity, mapped to the log level: 0-3 info, 4 debug, 5 and above trace (or --log-level)',
    placeholder: 'N',
  },
  {
    name: 'logtostderr',
    kind: 'bool',
    default: true,
    help: 'log to stderr; false: to --log-file or --log-dir',
  },
  {
    name: 'alsologtostderr',
    kind: 'bool',
    default: false,
    help: 'with --logtostderr=false: also log to stderr (from --alsologtostderrthreshold up)',
  },
  {
    name: 'log-file',
    kind: 'string',
    help: 'with --logtostderr=false: the log file (JSON lines)',
    placeholder: 'FILE',
  },
  {
    name: 'log-dir',
    kind: 'string',
    help: 'with --logtostderr=false and no --log-file: log to knats-<command>.log in this folder (default: the temp folder)',
    placeholder: 'DIR',
  },
  {
    name: 'log-file-max-size',
    kind: 'int',
    default: 1800,
    help: 'megabytes a log file may reach before it starts over; 0: no limit',
    placeholder: 'MB',
  },
  {
    name: 'stderrthreshold',
    kind: 'string',
    default: 'ERROR',
    help: 'when logging to a file: lines from this severity up (INFO, WARNING, ERROR, FATAL) also go to stderr',
    placeholder: 'SEVERITY',
  },
  {
    name: 'alsologtostderrthreshold',
    kind: 'string',
    default: 'INFO',
    help: 'with --alsologtostderr: lines from this severity up go to stderr',
    placeholder: 'SEVERITY',
  },
  {
    name: 'legacy-stderr-threshold-behavior',
    kind: 'bool',
    default: true,
    help: 'false: --stderrthreshold applies with --logtostderr=true too',
  },
  { name: 'vmodule', kind: 'string', replacedBy: '--v or --log-level (one level per process)', help: '' },
  {
    name: 'log-backtrace-at',
    kind: 'string',
    replacedBy: 'nothing: log lines never carry stack traces',
    help: '',
  },
  { name: 'add-dir-header', kind: 'bool', replacedBy: HEADER_FLAGS, help: '' },
  { name: 'skip-headers', kind: 'bool', replacedBy: HEADER_FLAGS, help: '' },
  { name: 'skip-log-headers', kind: 'bool', replacedBy: HEADER_FLAGS, help: '' },
  { name: 'one-output', kind: 'bool', replacedBy: 'one log file holding every level', help: '' },
];

function bad(message: string): KnatsError {
  return new KnatsError(ErrorCode.BadConfig, message);
}

/** klog severities by name or number, as its flags take them. */
const SEVERITIES: Record<string, LogLevel> = {
  INFO: 'info',
  WARNING: 'warn',
  ERROR: 'error',
  FATAL: 'fatal',
  '0': 'info',
  '1': 'warn',
  '2': 'error',
  '3': 'fatal',
};

function severity(flags: FlagReader, name: string): LogLevel {
  const text = flags.string(name) ?? '';
  const level = SEVERITIES[text.toUpperCase()];
  if (!level) throw bad(`--${name}: expected INFO, WARNING, ERROR or FATAL, got ${JSON.stringify(text)}`);
  return level;
}

function verbosityLevel(v: number): LogLevel {
  if (v < 0) throw bad(`--v: must not be negative, got ${v}`);
  if (v >= 5) return 'trace';
  return v === 4 ? 'debug' : 'info';
}

function logLevel(flags: FlagReader): LogLevel {
  // Both set: the command line wins over the environment; twice on one of them is a mistake.
  const both = flags.has('v') && flags.has('log-level');
  if (both && flags.onCommandLine('v') === flags.onCommandLine('log-level'))
    throw bad('--v and --log-level: give one of them');
  if (flags.has('v') && (!both || flags.onCommandLine('v'))) return verbosityLevel(flags.int('v'));
  const level = flags.string('log-level') ?? 'info';
  if (!LOG_LEVELS.includes(level as LogLevel))
    throw bad(`--log-level: unknown level ${JSON.stringify(level)}`);
  return level as LogLevel;
}

/** klog's routing: stderr, or a file with the lines from a threshold up also on stderr. */
export function logSettings(flags: FlagReader, command: string): LogSettings {
  const level = logLevel(flags);
  const maxMegabytes = flags.int('log-file-max-size');
  if (maxMegabytes < 0) throw bad('--log-file-max-size: must not be negative');
  const stderrThreshold = severity(flags, 'stderrthreshold');
  const alsoThreshold = severity(flags, 'alsologtostderrthreshold');
  if (flags.bool('logtostderr')) {
    // Upstream's legacy behaviour, the default: everything goes to stderr whatever the threshold.
    return flags.bool('legacy-stderr-threshold-behavior')
      ? { level }
      : { level, stderrLevel: stderrThreshold };
  }
  const path = flags.string('log-file') ?? join(flags.string('log-dir') ?? tmpdir(), `knats-${command}.log`);
  return {
    level,
    file: { path, maxBytes: maxMegabytes * 1024 * 1024 },
    stderrLevel: flags.bool('alsologtostderr') ? alsoThreshold : stderrThreshold,
  };
}
