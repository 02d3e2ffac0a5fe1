import { fstatSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { type DestinationStream, type Logger, pino } from 'pino';
import { ErrorCode, KnatsError } from './errors.js';
import { redactRecord, redactUserinfo } from './redact.js';

export type { Logger };

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** Where log lines go: stderr by default; a file (upstream's klog flags) with only some levels on stderr. */
export interface LogSettings {
  readonly level: LogLevel;
  readonly file?: {
    readonly path: string;
    /** The file starts over once it would exceed this (klog's --log-file-max-size); 0: no limit. */
    readonly maxBytes: number;
  };
  /** The lowest level written to stderr ('silent': none); default: every line without a file, none with one. */
  readonly stderrLevel?: LogLevel;
}

/**
 * A log file written synchronously, line by line (logs are a few lines per
 * tunnel, never per byte), that is truncated and started over when the next
 * line would pass `maxBytes`, as klog does with one --log-file.
 */
function fileSink(path: string, maxBytes: number): DestinationStream {
  let fd: number;
  try {
    fd = openSync(path, 'a', 0o640);
  } catch (err) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `log file ${path} (--log-file, --log-dir): cannot write it (${(err as Error).message})`,
    );
  }
  let size = fstatSync(fd).size;
  return {
    write(line: string) {
      const bytes = Buffer.byteLength(line);
      if (maxBytes > 0 && size + bytes > maxBytes) {
        ftruncateSync(fd, 0);
        size = 0;
      }
      writeSync(fd, line);
      size += bytes;
    },
  };
}

function destination(settings: LogSettings): DestinationStream {
  const stderr = pino.destination({ fd: 2, sync: false });
  if (!settings.file && settings.stderrLevel === undefined) return stderr;
  const streams: pino.StreamEntry<LogLevel>[] = [];
  if (settings.file) {
    streams.push({ level: settings.level, stream: fileSink(settings.file.path, settings.file.maxBytes) });
  }
  const stderrLevel = settings.stderrLevel ?? 'silent';
  if (stderrLevel !== 'silent') streams.push({ level: stderrLevel, stream: stderr });
  return pino.multistream(streams);
}

/**
 * One logger per process, JSON lines on stderr (stdout stays free for what a
 * command prints, such as `knats dial` piping bytes) or in a file. Children
 * carry the component and, per tunnel, the tunnelId, so one grep tells a
 * tunnel's story.
 *
 * Every line is one structured record without a stack trace: an `err` field
 * is logged as its message, and URL userinfo (passwords, tokens) is redacted
 * from every string, whatever logged it.
 */
export function createLogger(options: { name: string; level?: LogLevel; output?: LogSettings }): Logger {
  const level = options.output?.level ?? options.level ?? 'info';
  return pino(
    {
      level,
      base: { component: options.name, pid: process.pid },
      formatters: { log: (record) => redactRecord(record) as Record<string, unknown> },
      hooks: {
        logMethod(args, method) {
          method.apply(
            this,
            args.map((arg) => (typeof arg === 'string' ? redactUserinfo(arg) : arg)) as typeof args,
          );
        },
      },
    },
    destination(options.output ?? { level }),
  );
}

/** A logger that drops everything, for library use and tests that do not read logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
