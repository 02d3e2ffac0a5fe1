import { type Logger, pino } from 'pino';
import { redactRecord, redactUserinfo } from './redact.js';

export type { Logger };

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/**
 * One logger per process, JSON lines on stderr (stdout stays free for what a
 * command prints, such as `knats dial` piping bytes). Children carry the
 * component and, per tunnel, the tunnelId, so one grep tells a tunnel's story.
 *
 * Every line is one structured record without a stack trace: an `err` field
 * is logged as its message, and URL userinfo (passwords, tokens) is redacted
 * from every string, whatever logged it.
 */
export function createLogger(options: { level?: LogLevel; name: string }): Logger {
  return pino(
    {
      level: options.level ?? 'info',
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
    pino.destination({ fd: 2, sync: false }),
  );
}

/** A logger that drops everything, for library use and tests that do not read logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
