/**
 * Secrets never reach a log line or an error message: the userinfo of a URL
 * (`nats://user:password@host`, `nats://token@host`) is replaced by `***`.
 */

/**
 * A URL's userinfo runs to the last `@` of the URL (a password may hold `@`
 * or `/` when it was not percent-encoded, and the text must not leak then
 * either). URLs end at whitespace, a comma (server lists) or a quote.
 */
const USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s,"'<>]*@/gi;
/** `user:password@host` without a scheme, as a mistyped --nats-url may hold. */
const BARE_USERINFO = /(^|[\s,"'(=])[^\s,"'()/@:]+:[^\s,"'/]*@/g;

export function redactUserinfo(text: string): string {
  return text.replace(USERINFO, '$1***@').replace(BARE_USERINFO, '$1***@');
}

/** Redacts every string in a log record, nested objects included (errors are logged as their message). */
export function redactRecord(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactUserinfo(value);
  if (depth > 4 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error) return redactUserinfo(value.message);
  if (Array.isArray(value)) return value.map((item) => redactRecord(item, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[key] = redactRecord(item, depth + 1);
  return out;
}
