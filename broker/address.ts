/**
 * Dial addresses ("host:port", "[v6]:port"), IP literals and host names, pure.
 * The one IP parser of the project: the destination policy matches with it,
 * and the frontend and the agent both validate dial hosts with it.
 */
import { ErrorCode, KnatsError } from './errors.js';

export interface DialAddress {
  readonly host: string;
  readonly port: number;
}

/** An IP address: family and value, big-endian, 32 or 128 bits. */
export interface IpAddress {
  readonly family: 4 | 6;
  readonly bits: bigint;
}

/** Strict dotted quad (no octal, hex or short forms: getaddrinfo reads those differently). */
export function parseIpv4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0n;
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return undefined;
    const n = Number(part);
    if (n > 255) return undefined;
    value = (value << 8n) | BigInt(n);
  }
  return value;
}

function parseIpv6(text: string): bigint | undefined {
  if (text.length > 45 || !/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groupsOf = (part: string): number[] | undefined => {
    if (part === '') return [];
    const out: number[] = [];
    const items = part.split(':');
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      if (i === items.length - 1 && item.includes('.')) {
        const v4 = parseIpv4(item);
        if (v4 === undefined) return undefined;
        out.push(Number(v4 >> 16n), Number(v4 & 0xffffn));
      } else {
        if (!/^[0-9A-Fa-f]{1,4}$/.test(item)) return undefined;
        out.push(Number.parseInt(item, 16));
      }
    }
    return out;
  };
  const head = groupsOf(halves[0]!);
  const tail = halves.length === 2 ? groupsOf(halves[1]!) : [];
  if (!head || !tail) return undefined;
  let groups: number[];
  if (halves.length === 2) {
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return undefined;
    groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else {
    groups = head;
  }
  if (groups.length !== 8) return undefined;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
}

const V4_MAPPED_PREFIX = 0xffffn;
/** An interface name after '%' (Linux: at most 15 bytes). */
const ZONE = /^[A-Za-z0-9_.-]{1,15}$/;

/**
 * An IP literal as {family, bits}, or undefined if `text` is not one. A zone
 * (fe80::1%eth0) is ignored, and an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * is the IPv4 address it maps to, because that is where a socket goes.
 */
export function parseIp(text: string): IpAddress | undefined {
  const v4 = parseIpv4(text);
  if (v4 !== undefined) return { family: 4, bits: v4 };
  const zone = text.indexOf('%');
  if (zone >= 0 && !ZONE.test(text.slice(zone + 1))) return undefined;
  const v6 = parseIpv6(zone >= 0 ? text.slice(0, zone) : text);
  if (v6 === undefined) return undefined;
  if (v6 >> 32n === V4_MAPPED_PREFIX) return { family: 4, bits: v6 & 0xffffffffn };
  return { family: 6, bits: v6 };
}

/** The dotted-quad text of an IPv4 address. */
export function formatIpv4(bits: bigint): string {
  return [24n, 16n, 8n, 0n].map((shift) => Number((bits >> shift) & 0xffn)).join('.');
}

const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/i;

/**
 * A DNS host name: 1-253 characters (one trailing dot aside), labels of 1-63
 * letters, digits, '-' and '_' that neither start nor end with '-'. A name
 * whose last label is all digits (10.1, 2130706433, 0) is refused: it is an
 * IP address in a form only getaddrinfo reads, never a name.
 */
export function isHostName(text: string): boolean {
  const name = text.endsWith('.') ? text.slice(0, -1) : text;
  if (name.length === 0 || name.length > 253) return false;
  const labels = name.split('.');
  if (!labels.every((l) => LABEL.test(l))) return false;
  return !/^[0-9]+$/.test(labels[labels.length - 1]!);
}

/** How much of a hostile address an error message repeats. */
const ECHO_LIMIT = 128;

function shown(address: string): string {
  return JSON.stringify(address.length > ECHO_LIMIT ? `${address.slice(0, ECHO_LIMIT)}...` : address);
}

/**
 * Parses and validates a dial address. The host must be a host name
 * (isHostName) or an IP literal (IPv6 in brackets): a NUL or any other
 * character outside a name would pass a name check here and be cut or
 * reinterpreted by the resolver later.
 */
export function parseDialAddress(address: string): DialAddress {
  const bad = (why: string) => new KnatsError(ErrorCode.BadAddress, `bad address ${shown(address)}: ${why}`);
  if (address.length > 1024) throw bad(`too long (${address.length} characters)`);
  let host: string;
  let portText: string;
  const bracketed = address.startsWith('[');
  if (bracketed) {
    const end = address.indexOf(']');
    if (end < 0 || address[end + 1] !== ':') throw bad('expected [ipv6]:port');
    host = address.slice(1, end);
    portText = address.slice(end + 2);
  } else {
    const colon = address.lastIndexOf(':');
    if (colon < 0) throw bad('missing port');
    host = address.slice(0, colon);
    portText = address.slice(colon + 1);
    if (host.includes(':')) throw bad('IPv6 addresses need brackets: [addr]:port');
  }
  if (host.length === 0) throw bad('empty host');
  if (!/^[0-9]{1,5}$/.test(portText)) throw bad('port must be a number');
  const port = Number(portText);
  if (port < 1 || port > 65535) throw bad('port out of range 1-65535');
  if (bracketed) {
    if (!parseIp(host)) throw bad('not an IP address inside the brackets');
  } else if (/[^A-Za-z0-9._-]/.test(host)) {
    throw bad('invalid character in host (a host name or an IPv4 address)');
  } else if (!parseIp(host) && !isHostName(host)) {
    throw bad('not a host name (dot-separated labels of letters, digits, - and _) or an IPv4 address');
  }
  return { host, port };
}
