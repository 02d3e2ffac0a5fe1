/**
 * Destination policy of an agent (--allow-destinations / --deny-destinations),
 * pure: parsing, matching, and the guarded dial sequence with DNS and TCP
 * injected, so every rule is unit-tested without a network.
 *
 * Syntax of a list: comma-separated entries, each optionally with ports.
 *
 *   ENTRY[:PORTS]       ENTRY is one of
 *                         10.0.0.0/8        IPv4 CIDR (host bits are masked, as Go's ParseCIDR)
 *                         10.1.2.3          one IPv4 address (= /32)
 *                         fd00::/8          IPv6 CIDR or address; with ports it needs brackets:
 *                         [fd00::]/8:443    or [fd00::/8]:443, [fd00::1]:443
 *                         api.example.com   one host name (case-insensitive, trailing dot ignored)
 *                         *.svc.cluster.local  any name below that suffix (not the suffix itself)
 *                         *                 every destination
 *                       PORTS is a port or a range (8000-8999); further ports of the same
 *                       entry follow as separate comma-separated items:
 *                         10.0.0.0/8:443,8443,9000-9100,*.svc.cluster.local:443
 *                       = 10.0.0.0/8 on 443, 8443 and 9000-9100; *.svc.cluster.local on 443.
 *
 * Decision for a dial of HOST:PORT (HOST a name resolved to ADDRS, or a literal IP = ADDRS):
 *   1. Deny wins: denied if HOST (by name entries) or any address in ADDRS (by IP entries)
 *      matches a --deny-destinations entry.
 *   2. An empty allow list allows everything; otherwise HOST must match a name entry,
 *      or every address in ADDRS must match an IP entry, of --allow-destinations.
 *   3. Denied by default (DEFAULT_DENIED_DESTINATIONS): loopback, link-local, and cloud
 *      metadata and credential endpoints; also this agent's own health and admin ports on
 *      its own addresses (withOwnEndpoints). A default denial is lifted only by an exact
 *      allow entry (a single IP or an exact name, not a range, wildcard or '*'; for the
 *      agent's own ports, a single IP that lists that port), so allowing 0.0.0.0/0 or '*'
 *      never re-opens them.
 * Addresses are matched where a socket really goes: the unspecified addresses 0.0.0.0 and ::
 * are 127.0.0.1 and ::1 (the kernel connects them to loopback), an IPv4-mapped address
 * (::ffff:a.b.c.d) and a NAT64 address (64:ff9b::a.b.c.d, or 64:ff9b:1::/48 of RFC 8215) are the
 * IPv4 address they carry.
 * Names are checked before the DNS lookup (a denied name is not even resolved) and every
 * address the lookup returns is checked after it; the dial then goes to a checked
 * address, never through a second lookup, so DNS cannot smuggle a denied IP.
 */
import { formatIpv4, type IpAddress, isHostName, parseIp, parseIpv4 } from '../broker/address.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';

/** Denied unless allowed by an exact entry; the first group an address matches names it in messages. */
export const DEFAULT_DENIED_DESTINATIONS: readonly { readonly what: string; readonly entries: string }[] = [
  {
    what: 'a cloud metadata or credential endpoint',
    entries: [
      '169.254.169.254', // AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
      'fd00:ec2::254', // AWS over IPv6
      '169.254.170.2', // ECS task credentials
      '169.254.170.23', // EKS Pod Identity
      'fd00:ec2::23', // EKS Pod Identity over IPv6
      '100.100.100.200', // Alibaba Cloud
      'metadata.google.internal',
      'metadata',
    ].join(','),
  },
  { what: 'a loopback address', entries: '127.0.0.0/8,::1,0.0.0.0/8' },
  { what: 'a link-local address', entries: '169.254.0.0/16,fe80::/10' },
];

export interface PortRange {
  readonly from: number;
  readonly to: number;
}

interface IpNet {
  readonly family: 4 | 6;
  /** Network address, big-endian, 32 or 128 bits. */
  readonly bits: bigint;
  readonly prefix: number;
}

type Matcher =
  | { readonly kind: 'any' }
  | { readonly kind: 'ip'; readonly net: IpNet }
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'suffix'; readonly suffix: string };

export interface DestinationRule {
  /** The entry as written (ports included), for messages. */
  readonly text: string;
  readonly matcher: Matcher;
  /** undefined: every port. */
  readonly ports?: readonly PortRange[];
}

/** A rule that holds unless an exact allow entry lifts it; `what` names it in messages. */
export interface DefaultDenyRule extends DestinationRule {
  readonly what: string;
}

export interface DestinationPolicy {
  readonly allow: readonly DestinationRule[];
  readonly deny: readonly DestinationRule[];
  readonly defaultDeny: readonly DefaultDenyRule[];
  /** This agent's own health and admin ports on its own addresses (withOwnEndpoints). */
  readonly ownEndpoints: readonly DestinationRule[];
}

export type Verdict = { readonly allowed: true } | { readonly allowed: false; readonly reason: string };

const ALLOWED: Verdict = { allowed: true };

function netContains(net: IpNet, ip: IpAddress): boolean {
  if (net.family !== ip.family) return false;
  const width = net.family === 4 ? 32 : 128;
  const shift = BigInt(width - net.prefix);
  return ip.bits >> shift === net.bits >> shift;
}

// ---------------------------------------------------------------------------
// Names.

/** Lower case, without one trailing dot. */
export function normalizeName(host: string): string {
  const lower = host.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

// ---------------------------------------------------------------------------
// Parsing.

function bad(flag: string, entry: string, why: string): KnatsError {
  return new KnatsError(ErrorCode.BadConfig, `--${flag}: bad entry ${JSON.stringify(entry)}: ${why}`);
}

const PORT_ITEM = /^[0-9]{1,5}(-[0-9]{1,5})?$/;

function parsePortItem(item: string, flag: string, entry: string): PortRange {
  if (!PORT_ITEM.test(item)) throw bad(flag, entry, `${JSON.stringify(item)} is not a port or port range`);
  const [fromText, toText] = item.split('-');
  const from = Number(fromText);
  const to = toText === undefined ? from : Number(toText);
  if (from < 1 || to > 65535 || from > to) throw bad(flag, entry, `port range ${item} outside 1-65535`);
  return { from, to };
}

function parseNet(text: string, flag: string, entry: string): IpNet {
  const slash = text.indexOf('/');
  const addressText = slash >= 0 ? text.slice(0, slash) : text;
  const ip = parseIp(addressText);
  if (!ip || addressText.includes('%'))
    throw bad(flag, entry, `${JSON.stringify(addressText)} is not an IP address`);
  // ::ffff:10.0.0.0/104 is the IPv4 net 10.0.0.0/8.
  const mapped = ip.family === 4 && addressText.includes(':');
  const width = ip.family === 4 ? 32 : 128;
  let prefix = width;
  if (slash >= 0) {
    const prefixText = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(prefixText)) throw bad(flag, entry, 'prefix length must be a number');
    prefix = Number(prefixText) - (mapped ? 96 : 0);
    if (prefix < 0 || prefix > width) throw bad(flag, entry, `prefix length out of range 0-${width}`);
  }
  const shift = BigInt(width - prefix);
  return { family: ip.family, bits: (ip.bits >> shift) << shift, prefix };
}

/** Splits an entry (without any following port items) into its target and first port item. */
function splitEntry(entry: string, flag: string): { target: string; port?: string; bracketed: boolean } {
  if (entry.startsWith('[')) {
    const end = entry.indexOf(']');
    if (end < 0) throw bad(flag, entry, "missing ']'");
    let target = entry.slice(1, end);
    let rest = entry.slice(end + 1);
    const prefixMatch = /^\/[0-9]{1,3}/.exec(rest);
    if (prefixMatch) {
      if (target.includes('/')) throw bad(flag, entry, 'two prefix lengths');
      target += prefixMatch[0];
      rest = rest.slice(prefixMatch[0].length);
    }
    if (rest === '') return { target, bracketed: true };
    if (!rest.startsWith(':')) throw bad(flag, entry, `unexpected ${JSON.stringify(rest)} after ']'`);
    return { target, port: rest.slice(1), bracketed: true };
  }
  const colons = entry.split(':').length - 1;
  if (colons >= 2) return { target: entry, bracketed: false }; // bare IPv6: no ports without brackets
  if (colons === 1) {
    const colon = entry.indexOf(':');
    return { target: entry.slice(0, colon), port: entry.slice(colon + 1), bracketed: false };
  }
  return { target: entry, bracketed: false };
}

function parseTarget(target: string, bracketed: boolean, flag: string, entry: string): Matcher {
  if (target === '') throw bad(flag, entry, 'empty destination');
  if (target === '*') {
    if (bracketed) throw bad(flag, entry, "'*' needs no brackets");
    return { kind: 'any' };
  }
  if (bracketed || target.includes('/') || target.includes(':') || parseIpv4(target) !== undefined) {
    const net = parseNet(target, flag, entry);
    if (bracketed && net.family === 4 && !target.includes(':')) {
      throw bad(flag, entry, 'brackets are for IPv6 addresses');
    }
    return { kind: 'ip', net };
  }
  const name = normalizeName(target);
  if (name.startsWith('*.')) {
    const suffix = name.slice(2);
    if (!isHostName(suffix)) throw bad(flag, entry, `${JSON.stringify(target)} is not a valid wildcard name`);
    return { kind: 'suffix', suffix: `.${suffix}` };
  }
  if (!isHostName(name)) {
    throw bad(
      flag,
      entry,
      `${JSON.stringify(target)} is not an IP address, CIDR or host name ('*.' only as the first label)`,
    );
  }
  return { kind: 'name', name };
}

/**
 * Parses one flag's list. `flag` names the flag in errors (KnatsError BadConfig).
 * Whitespace around items is ignored; an empty list is [].
 */
export function parseDestinationList(text: string, flag: string): DestinationRule[] {
  const rules: { text: string; matcher: Matcher; ports?: PortRange[] }[] = [];
  const items = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  let last: { text: string; ports?: PortRange[] } | undefined;
  for (const item of items) {
    if (PORT_ITEM.test(item)) {
      // A further port of the entry before: "10.0.0.0/8:443,8443".
      if (!last?.ports) {
        throw bad(
          flag,
          item,
          last
            ? `a bare port must follow an entry that has ports (write ${last.text}:${item})`
            : 'a list cannot start with a port',
        );
      }
      last.ports.push(parsePortItem(item, flag, `${last.text},${item}`));
      last.text += `,${item}`;
      continue;
    }
    const { target, port, bracketed } = splitEntry(item, flag);
    const matcher = parseTarget(target, bracketed, flag, item);
    const rule: { text: string; matcher: Matcher; ports?: PortRange[] } = { text: item, matcher };
    if (port !== undefined) rule.ports = [parsePortItem(port, flag, item)];
    rules.push(rule);
    last = rule;
  }
  return rules;
}

export interface PolicyOptions {
  /** --allow-destinations text; empty: everything not denied. */
  readonly allow?: string;
  /** --deny-destinations text. */
  readonly deny?: string;
}

export function createDestinationPolicy(options: PolicyOptions = {}): DestinationPolicy {
  return {
    allow: parseDestinationList(options.allow ?? '', 'allow-destinations'),
    deny: parseDestinationList(options.deny ?? '', 'deny-destinations'),
    defaultDeny: DEFAULT_DENIED_DESTINATIONS.flatMap(({ what, entries }) =>
      parseDestinationList(entries, 'default-deny').map((rule) => ({ ...rule, what })),
    ),
    ownEndpoints: [],
  };
}

/** The default: loopback, link-local and metadata endpoints denied, everything else allowed. */
export const defaultDestinationPolicy: DestinationPolicy = createDestinationPolicy();

/**
 * `policy` plus this agent's own health and admin `ports` on every address
 * that reaches the agent itself: `localAddresses` (its interfaces) and all
 * of loopback. Only a single-IP allow entry that lists the port lifts it.
 */
export function withOwnEndpoints(
  policy: DestinationPolicy,
  ports: readonly number[],
  localAddresses: readonly string[],
): DestinationPolicy {
  const open = ports.filter((p) => p > 0);
  if (open.length === 0) return { ...policy, ownEndpoints: [] };
  const portRanges = open.map((p) => ({ from: p, to: p }));
  const nets = ['127.0.0.0/8', '::1', ...localAddresses.filter((a) => parseIp(a))];
  const ownEndpoints = nets.flatMap((text) =>
    parseDestinationList(text.includes(':') ? `[${text}]` : text, 'own-endpoints').map((rule) => ({
      ...rule,
      ports: portRanges,
    })),
  );
  return { ...policy, ownEndpoints };
}

// ---------------------------------------------------------------------------
// Matching.

function portMatches(rule: DestinationRule, port: number): boolean {
  return rule.ports === undefined || rule.ports.some((r) => port >= r.from && port <= r.to);
}

function matchesName(rule: DestinationRule, name: string, port: number): boolean {
  const m = rule.matcher;
  const hit =
    m.kind === 'any' ||
    (m.kind === 'name' && m.name === name) ||
    (m.kind === 'suffix' && name.endsWith(m.suffix));
  return hit && portMatches(rule, port);
}

function matchesIp(rule: DestinationRule, ip: IpAddress, port: number): boolean {
  const m = rule.matcher;
  const hit = m.kind === 'any' || (m.kind === 'ip' && netContains(m.net, ip));
  return hit && portMatches(rule, port);
}

/**
 * An allow entry naming exactly this name or address (not a range, wildcard
 * or '*'); with `portListed`, the entry must also list its ports.
 */
function exactlyAllowed(
  policy: DestinationPolicy,
  port: number,
  target: { name: string } | { ip: IpAddress },
  portListed = false,
): boolean {
  return policy.allow.some((rule) => {
    const m = rule.matcher;
    if (!portMatches(rule, port) || (portListed && rule.ports === undefined)) return false;
    if ('name' in target) return m.kind === 'name' && m.name === target.name;
    if (m.kind !== 'ip') return false;
    const width = m.net.family === 4 ? 32 : 128;
    return m.net.prefix === width && netContains(m.net, target.ip);
  });
}

const NAT64_PREFIX = 0x64ff9bn << 96n;
/** RFC 8215's local-use NAT64 prefix 64:ff9b:1::/48, as its first 48 bits. */
const NAT64_LOCAL_USE_PREFIX = 0x64ff9b0001n;

/**
 * A NAT64 address: the well-known 64:ff9b::/96, or one in the local-use
 * 64:ff9b:1::/48 read with the /96 layout (the IPv4 address in the last 32
 * bits), which is how translators are set up inside it (e.g. 64:ff9b:1:ab::/96).
 */
function isNat64(ip: IpAddress): boolean {
  return (
    ip.family === 6 && (ip.bits >> 32n === NAT64_PREFIX >> 32n || ip.bits >> 80n === NAT64_LOCAL_USE_PREFIX)
  );
}

/**
 * Where a socket to `text` really goes, for matching: the unspecified
 * addresses are loopback (Linux connects 0.0.0.0 to 127.0.0.1 and :: to
 * ::1), and a NAT64 address of the well-known prefix 64:ff9b::/96 or of
 * the local-use prefix 64:ff9b:1::/48 (RFC 8215) reaches the IPv4 address
 * it carries. `shown` is that address as an allow entry
 * would name it; `note` explains a rewrite in messages.
 */
interface DestinationIp {
  readonly text: string;
  readonly ip: IpAddress;
  readonly shown: string;
  readonly note: string;
}

function destinationIp(text: string, parsed = parseIp(text)): DestinationIp | undefined {
  if (!parsed) return undefined;
  if (parsed.bits === 0n) {
    const shown = parsed.family === 4 ? '127.0.0.1' : '::1';
    const ip: IpAddress = parsed.family === 4 ? { family: 4, bits: 0x7f000001n } : { family: 6, bits: 1n };
    return { text, ip, shown, note: ` (the unspecified address connects to ${shown})` };
  }
  if (isNat64(parsed)) {
    const bits = parsed.bits & 0xffffffffn;
    const shown = formatIpv4(bits);
    return { text, ip: { family: 4, bits }, shown, note: ` (the NAT64 form of ${shown})` };
  }
  return { text, ip: parsed, shown: text, note: '' };
}

function denied(reason: string): Verdict {
  return { allowed: false, reason };
}

function destinationText(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Before DNS: is the host name itself denied? (An IP literal is decided in
 * full here, since there is nothing to resolve.) Allowed means "go on and
 * resolve", not yet "dial".
 */
export function checkName(policy: DestinationPolicy, host: string, port: number): Verdict {
  const literal = parseIp(host);
  if (literal) return checkLiteral(policy, host, port, literal);
  return checkHostName(policy, host, port);
}

/** An IP literal destination, parsed once by the caller: decided in full. */
function checkLiteral(policy: DestinationPolicy, host: string, port: number, literal: IpAddress): Verdict {
  return checkAddresses(policy, host, port, undefined, [destinationIp(host, literal)!]);
}

/** A host name (not an IP literal) against the name entries. */
function checkHostName(policy: DestinationPolicy, host: string, port: number): Verdict {
  const dest = destinationText(host, port);
  // A name the resolver would read differently (a NUL ends it, 127.1 is an address) is never dialed.
  if (!isHostName(host)) return denied(`${JSON.stringify(dest)} is not a valid host name or IP address`);
  const name = normalizeName(host);
  const deny = policy.deny.find((r) => matchesName(r, name, port));
  if (deny) return denied(`${dest} matches --deny-destinations entry ${JSON.stringify(deny.text)}`);
  const byDefault = policy.defaultDeny.find((r) => matchesName(r, name, port));
  if (byDefault && !exactlyAllowed(policy, port, { name })) {
    return denied(
      `${dest} is ${byDefault.what}, denied by default (allow it explicitly with --allow-destinations ${name})`,
    );
  }
  return ALLOWED;
}

/**
 * After DNS: `addresses` are every address the name resolved to (or the
 * literal IP itself). Denied if any of them is; see the module comment.
 */
export function checkResolved(
  policy: DestinationPolicy,
  host: string,
  port: number,
  addresses: readonly string[],
): Verdict {
  const name = parseIp(host) ? undefined : normalizeName(host);
  const dest = destinationText(host, port);
  if (name !== undefined) {
    const byName = checkHostName(policy, host, port);
    if (!byName.allowed) return byName;
  }
  if (addresses.length === 0) return denied(`${dest} resolved to no address`);
  const ips: DestinationIp[] = [];
  for (const text of addresses) {
    const ip = destinationIp(text);
    if (!ip) return denied(`${dest} resolved to ${JSON.stringify(text)}, which is not an IP address`);
    ips.push(ip);
  }
  return checkAddresses(policy, host, port, name, ips);
}

/** The address rules for `ips`, every address `host` (a name, or undefined for a literal) goes to. */
function checkAddresses(
  policy: DestinationPolicy,
  host: string,
  port: number,
  name: string | undefined,
  ips: readonly DestinationIp[],
): Verdict {
  const literal = name === undefined;
  const dest = destinationText(host, port);
  const via = ({ text, note }: { text: string; note: string }) =>
    literal ? `${text}${note}` : `${host} resolves to ${text}${note}, which`;
  for (const ip of ips) {
    const deny = policy.deny.find((r) => matchesIp(r, ip.ip, port));
    if (deny) {
      return denied(
        literal && !ip.note
          ? `${dest} matches --deny-destinations entry ${JSON.stringify(deny.text)}`
          : `${dest} denied: ${via(ip)} matches --deny-destinations entry ${JSON.stringify(deny.text)}`,
      );
    }
  }
  if (policy.allow.length > 0) {
    const nameAllowed = name !== undefined && policy.allow.some((r) => matchesName(r, name, port));
    if (!nameAllowed) {
      const outside = ips.find(({ ip }) => !policy.allow.some((r) => matchesIp(r, ip, port)));
      if (outside) {
        return denied(
          literal || ips.length === 1
            ? `${dest} is not in --allow-destinations`
            : `${dest} is not in --allow-destinations (${host} resolves to ${outside.text}, which is not allowed)`,
        );
      }
    }
  }
  for (const ip of ips) {
    if (
      policy.ownEndpoints.some((r) => matchesIp(r, ip.ip, port)) &&
      !exactlyAllowed(policy, port, { ip: ip.ip }, true)
    ) {
      return denied(
        `${dest} denied: ${via(ip)} is this agent's own address and ${port} its health or admin port (allow it explicitly with --allow-destinations ${destinationText(ip.shown, port)})`,
      );
    }
    const byDefault = policy.defaultDeny.find((r) => matchesIp(r, ip.ip, port));
    if (byDefault && !exactlyAllowed(policy, port, { ip: ip.ip })) {
      return denied(
        `${dest} denied: ${via(ip)} is ${byDefault.what}, denied by default (allow it explicitly with --allow-destinations ${ip.shown})`,
      );
    }
  }
  return ALLOWED;
}

// ---------------------------------------------------------------------------
// The guarded dial: resolve once, check every answer, dial only checked addresses.

export interface GuardedDialDeps<S> {
  /** Every address of `host` (dns.lookup with all: true). Not called for IP literals. */
  lookup(host: string): Promise<readonly string[]>;
  /** Dials one IP address with a timeout. */
  dial(ip: string, port: number, timeoutMs: number): Promise<S>;
  /** Maps a lookup failure to a KnatsError (DNS codes). */
  lookupError(err: unknown, host: string): KnatsError;
  now?(): number;
}

/** Go's net.Dialer gives each of several addresses a fair part of the deadline, at least 2 s. */
const MIN_ATTEMPT_MS = 2000;

/**
 * Checks `host:port` against the policy, resolves it once, checks every
 * address, and dials the checked addresses in order until one connects. A
 * denied destination rejects with KnatsError(DestinationDenied) before any
 * socket is opened. Returns the socket and the address it went to.
 */
export async function guardedDial<S>(
  policy: DestinationPolicy,
  destination: { host: string; port: number },
  timeoutMs: number,
  deps: GuardedDialDeps<S>,
): Promise<{ socket: S; ip: string }> {
  const { host, port } = destination;
  const now = deps.now ?? Date.now;
  const deadline = now() + timeoutMs;
  const deny = (verdict: Verdict) => {
    if (!verdict.allowed) throw new KnatsError(ErrorCode.DestinationDenied, verdict.reason);
  };
  // An IP literal is parsed once and decided in full here; a name is checked, resolved, then its addresses.
  const literal = parseIp(host);
  deny(literal ? checkLiteral(policy, host, port, literal) : checkHostName(policy, host, port));
  let addresses: readonly string[];
  if (literal) {
    addresses = [host];
  } else {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      addresses = await Promise.race([
        deps.lookup(host).catch((err: unknown) => {
          throw deps.lookupError(err, host);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new KnatsError(
                  ErrorCode.DialTimeout,
                  `dial tcp ${host}:${port}: DNS lookup timed out after ${timeoutMs} ms`,
                ),
              ),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    deny(checkResolved(policy, host, port, addresses));
  }
  let firstError: unknown;
  for (let i = 0; i < addresses.length; i++) {
    const remaining = deadline - now();
    if (remaining <= 0) break;
    const share = Math.floor(remaining / (addresses.length - i));
    const attemptMs = share < MIN_ATTEMPT_MS ? Math.min(MIN_ATTEMPT_MS, remaining) : share;
    const ip = addresses[i]!;
    try {
      return { socket: await deps.dial(ip, port, attemptMs), ip };
    } catch (err) {
      firstError ??= err;
      // A cancelled dial (agent stopping) is not retried on the next address.
      if (err instanceof KnatsError && err.code === ErrorCode.DialCancelled) throw err;
    }
  }
  throw (
    firstError ??
    new KnatsError(
      ErrorCode.DialTimeout,
      `dial tcp ${destinationText(host, port)}: i/o timeout after ${timeoutMs} ms`,
    )
  );
}
