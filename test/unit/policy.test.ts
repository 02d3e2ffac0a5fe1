import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  checkName,
  checkResolved,
  createDestinationPolicy,
  type DestinationPolicy,
  defaultDestinationPolicy,
  guardedDial,
  parseDestinationList,
  withOwnEndpoints,
} from '../../agent/policy.js';
import { parseIp } from '../../broker/address.js';
import { ErrorCode, KnatsError } from '../../broker/errors.js';

describe('destination policy: parsing', () => {
  const good: [string, string[]][] = [
    ['', []],
    [' , ', []],
    ['10.0.0.0/8', ['10.0.0.0/8']],
    ['10.0.0.0/8:443,8443', ['10.0.0.0/8:443,8443']],
    ['10.0.0.0/8:443,8443,*.svc.cluster.local', ['10.0.0.0/8:443,8443', '*.svc.cluster.local']],
    ['*.svc.cluster.local:443, 10.1.2.3:80-90,100', ['*.svc.cluster.local:443', '10.1.2.3:80-90,100']],
    ['[fd00::]/8:443', ['[fd00::]/8:443']],
    ['[fd00::/8]:443', ['[fd00::/8]:443']],
    ['fd00::/8', ['fd00::/8']],
    ['[::1]:22', ['[::1]:22']],
    ['::1', ['::1']],
    ['*', ['*']],
    ['*:443', ['*:443']],
    ['Kubernetes.Default.svc.', ['Kubernetes.Default.svc.']],
    ['10.0.0.1/8', ['10.0.0.1/8']],
    ['::ffff:10.0.0.0/104', ['::ffff:10.0.0.0/104']],
  ];
  for (const [text, entries] of good) {
    it(`accepts ${JSON.stringify(text)}`, () => {
      assert.deepEqual(
        parseDestinationList(text, 'allow-destinations').map((r) => r.text),
        entries,
      );
    });
  }

  const badLists: [string, RegExp][] = [
    ['443', /cannot start with a port/],
    ['10.0.0.0/8,443', /bare port must follow an entry that has ports/],
    ['10.0.0.0/33', /prefix length out of range/],
    ['fd00::/129', /prefix length out of range/],
    ['10.0.0.0/x', /prefix length must be a number/],
    ['10.0.0.256', /not an IP address, CIDR or host name/],
    ['10.1', /not an IP address, CIDR or host name/],
    ['foo/8', /not an IP address/],
    ['[10.0.0.1]:80', /brackets are for IPv6/],
    ['[fd00::1', /missing '\]'/],
    ['[fd00::1]x', /unexpected/],
    ['host:0', /outside 1-65535/],
    ['host:65536', /outside 1-65535/],
    ['host:90-80', /outside 1-65535/],
    ['host:http', /not a port/],
    ['a.*.com', /not an IP address, CIDR or host name/],
    ['*foo.com', /not an IP address, CIDR or host name/],
    ['*.', /not an IP address, CIDR or host name/],
    ['*..com', /not a valid wildcard/],
    ['bad_host!', /not an IP address, CIDR or host name/],
    ['-lead.example.com', /not an IP address, CIDR or host name/],
    [':443', /empty destination/],
    ['fe80::1%eth0', /not an IP address/],
  ];
  for (const [text, message] of badLists) {
    it(`rejects ${JSON.stringify(text)} naming the flag`, () => {
      assert.throws(
        () => parseDestinationList(text, 'deny-destinations'),
        (err: unknown) =>
          err instanceof KnatsError &&
          err.code === ErrorCode.BadConfig &&
          err.message.startsWith('--deny-destinations: bad entry') &&
          message.test(err.message),
      );
    });
  }
});

describe('destination policy: IP literals', () => {
  const cases: [string, { family: number; hex: string } | undefined][] = [
    ['10.1.2.3', { family: 4, hex: 'a010203' }],
    ['::ffff:10.1.2.3', { family: 4, hex: 'a010203' }],
    ['::ffff:a01:203', { family: 4, hex: 'a010203' }],
    ['::1', { family: 6, hex: '1' }],
    ['fe80::1%eth0', { family: 6, hex: 'fe800000000000000000000000000001' }],
    ['1:2:3:4:5:6:7:8', { family: 6, hex: '10002000300040005000600070008' }],
    ['1:2:3:4:5:6:7:8:9', undefined],
    ['1::2::3', undefined],
    ['01.2.3.4', undefined],
    ['256.1.1.1', undefined],
    ['localhost', undefined],
    ['2130706433', undefined],
  ];
  for (const [text, expected] of cases) {
    it(`parseIp(${JSON.stringify(text)})`, () => {
      const ip = parseIp(text);
      assert.deepEqual(ip && { family: ip.family, hex: ip.bits.toString(16) }, expected);
    });
  }
});

type Case = {
  allow?: string;
  deny?: string;
  host: string;
  port?: number;
  /** DNS answers for a name; an IP literal needs none. */
  dns?: string[];
  allowed: boolean;
  reason?: RegExp;
};

/** Decides a case as the agent does: the name before DNS, then its answers. */
function assertVerdict(policy: DestinationPolicy, c: Case): void {
  const port = c.port ?? 443;
  const isLiteral = parseIp(c.host) !== undefined;
  const before = checkName(policy, c.host, port);
  const verdict =
    isLiteral || !before.allowed ? before : checkResolved(policy, c.host, port, c.dns ?? ['203.0.113.1']);
  assert.equal(verdict.allowed, c.allowed, verdict.allowed ? 'allowed' : verdict.reason);
  if (c.reason && !verdict.allowed) assert.match(verdict.reason, c.reason);
}

describe('destination policy: decisions', () => {
  const cases: [string, Case][] = [
    ['default: a private address', { host: '10.0.0.1', allowed: true }],
    ['default: a name', { host: 'kubernetes.default.svc', dns: ['10.96.0.1'], allowed: true }],
    [
      'default: AWS/GCP/Azure metadata IP',
      {
        host: '169.254.169.254',
        port: 80,
        allowed: false,
        reason: /cloud metadata or credential endpoint, denied by default/,
      },
    ],
    ['default: AWS IPv6 metadata', { host: 'fd00:ec2::254', port: 80, allowed: false, reason: /metadata/ }],
    [
      'default: metadata via IPv4-mapped IPv6',
      { host: '::ffff:169.254.169.254', port: 80, allowed: false, reason: /metadata/ },
    ],
    [
      'default: GCP metadata name (before DNS)',
      {
        host: 'metadata.google.internal',
        allowed: false,
        reason: /metadata or credential endpoint, denied by default/,
      },
    ],
    ['default: metadata name, any case, trailing dot', { host: 'Metadata.Google.Internal.', allowed: false }],
    ['default: bare "metadata"', { host: 'metadata', allowed: false }],
    [
      'default: a name smuggling the metadata IP',
      {
        host: 'evil.example.com',
        dns: ['93.184.216.34', '169.254.169.254'],
        allowed: false,
        reason: /evil\.example\.com resolves to 169\.254\.169\.254, which is a cloud metadata/,
      },
    ],
    [
      'default: a neighbour of the metadata IP is link-local',
      { host: '169.254.169.253', allowed: false, reason: /169\.254\.169\.253 is a link-local address/ },
    ],
    ['default: IPv6 link-local', { host: 'fe80::1%eth0', allowed: false, reason: /link-local/ }],
    ...[
      '169.254.170.2',
      '169.254.170.23',
      'fd00:ec2::23',
      '100.100.100.200',
      '64:ff9b::a9fe:a9fe',
      '64:ff9b::169.254.169.254',
      '::ffff:100.100.100.200',
    ].map((host): [string, Case] => [
      `default: credential endpoint ${host}`,
      { host, allowed: false, reason: /cloud metadata or credential endpoint, denied by default/ },
    ]),
    [
      'default: the NAT64 form is named in the reason and the hint',
      {
        host: '64:ff9b::a9fe:a9fe',
        allowed: false,
        reason:
          /64:ff9b::a9fe:a9fe \(the NAT64 form of 169\.254\.169\.254\) is a cloud metadata .* --allow-destinations 169\.254\.169\.254\)/,
      },
    ],
    ['default: a NAT64 address outside the denied ones', { host: '64:ff9b::a00:1', allowed: true }],
    ['default: the NAT64 form of loopback', { host: '64:ff9b::7f00:1', allowed: false, reason: /loopback/ }],
    [
      'default: the local-use NAT64 prefix (RFC 8215) carries the metadata IP',
      {
        host: '64:ff9b:1::a9fe:a9fe',
        allowed: false,
        reason: /64:ff9b:1::a9fe:a9fe \(the NAT64 form of 169\.254\.169\.254\) is a cloud metadata/,
      },
    ],
    [
      'default: the local-use NAT64 prefix with a subnet, loopback',
      { host: '64:ff9b:1:ab::7f00:1', allowed: false, reason: /loopback/ },
    ],
    [
      'default: a local-use NAT64 address outside the denied ones',
      { host: '64:ff9b:1::a00:1', allowed: true },
    ],
    [
      'default: next to the local-use NAT64 prefix is not NAT64',
      { host: '64:ff9b:2::7f00:1', allowed: true },
    ],
    ...[
      '127.0.0.1',
      '127.9.9.9',
      '::1',
      '0.0.0.0',
      '::',
      '::ffff:0.0.0.0',
      '::ffff:127.0.0.1',
      '0.1.2.3',
    ].map((host): [string, Case] => [
      `default: loopback ${host}`,
      { host, allowed: false, reason: /a loopback address, denied by default/ },
    ]),
    [
      'default: 0.0.0.0 is named as the loopback address it reaches',
      {
        host: '0.0.0.0',
        allowed: false,
        reason:
          /0\.0\.0\.0 \(the unspecified address connects to 127\.0\.0\.1\) is a loopback .* --allow-destinations 127\.0\.0\.1\)/,
      },
    ],
    [
      'default: a name resolving to loopback',
      {
        host: 'localhost',
        dns: ['127.0.0.1'],
        allowed: false,
        reason: /localhost resolves to 127\.0\.0\.1, which is a loopback/,
      },
    ],
    [
      'default: a name resolving to the unspecified address',
      { host: 'zero.example', dns: ['0.0.0.0'], allowed: false, reason: /loopback/ },
    ],
    ['loopback allowed by an exact entry', { allow: '*,127.0.0.1', host: '127.0.0.1', allowed: true }],
    [
      '0.0.0.0 follows the exact entry of 127.0.0.1',
      { allow: '*,127.0.0.1', host: '0.0.0.0', allowed: true },
    ],
    [
      'loopback: an exact entry opens only that address',
      { allow: '*,127.0.0.1', host: '127.0.0.2', allowed: false },
    ],
    ['loopback NOT re-opened by a range', { allow: '127.0.0.0/8', host: '127.0.0.1', allowed: false }],
    [
      'deny 127.0.0.0/8 catches 0.0.0.0 (the NUL-free half of the review finding)',
      {
        allow: '*,127.0.0.1,::1',
        deny: '127.0.0.0/8,::1',
        host: '0.0.0.0',
        allowed: false,
        reason:
          /0\.0\.0\.0 \(the unspecified address connects to 127\.0\.0\.1\) matches --deny-destinations entry "127\.0\.0\.0\/8"/,
      },
    ],
    [
      'deny ::1 catches ::',
      { allow: '*,127.0.0.1,::1', deny: '127.0.0.0/8,::1', host: '::', allowed: false, reason: /"::1"/ },
    ],
    [
      'deny ::1 catches a name resolving to ::',
      { allow: '*,::1', deny: '::1', host: 'zero.example', dns: ['::'], allowed: false, reason: /"::1"/ },
    ],
    [
      'a NUL in the name never reaches DNS, even when a wildcard allows the suffix',
      {
        allow: '*.svc.cluster.local',
        host: 'localhost\0.svc.cluster.local',
        allowed: false,
        reason: /not a valid host name/,
      },
    ],
    ['a space in the name', { host: 'a b.example', allowed: false, reason: /not a valid host name/ }],
    ['a short numeric IPv4 form', { host: '127.1', allowed: false, reason: /not a valid host name/ }],
    [
      'metadata allowed by an exact IP entry',
      { allow: '169.254.169.254', host: '169.254.169.254', allowed: true },
    ],
    [
      'metadata allowed by an exact IP entry with its port only',
      { allow: '169.254.169.254:80', host: '169.254.169.254', port: 443, allowed: false },
    ],
    [
      'metadata NOT re-opened by a range',
      { allow: '169.254.0.0/16', host: '169.254.169.254', allowed: false, reason: /metadata/ },
    ],
    ['metadata NOT re-opened by 0.0.0.0/0', { allow: '0.0.0.0/0', host: '169.254.169.254', allowed: false }],
    ['metadata NOT re-opened by *', { allow: '*', host: '169.254.169.254', allowed: false }],
    [
      'metadata name allowed by exact name, but its IP still needs an exact entry',
      {
        allow: 'metadata.google.internal',
        host: 'metadata.google.internal',
        dns: ['169.254.169.254'],
        allowed: false,
      },
    ],
    [
      'metadata name and IP both allowed exactly',
      {
        allow: 'metadata.google.internal,169.254.169.254',
        host: 'metadata.google.internal',
        dns: ['169.254.169.254'],
        allowed: true,
      },
    ],
    [
      'metadata name NOT re-opened by a wildcard',
      { allow: '*.internal', host: 'metadata.google.internal', allowed: false },
    ],
    [
      'deny wins over exact allow of metadata',
      {
        allow: '169.254.169.254',
        deny: '169.254.0.0/16',
        host: '169.254.169.254',
        allowed: false,
        reason: /--deny-destinations entry "169.254.0.0\/16"/,
      },
    ],
    [
      'deny CIDR',
      {
        deny: '10.0.0.0/8',
        host: '10.2.3.4',
        allowed: false,
        reason: /10\.2\.3\.4:443 matches --deny-destinations entry "10.0.0.0\/8"/,
      },
    ],
    ['deny CIDR, outside', { deny: '10.0.0.0/8', host: '11.0.0.1', allowed: true }],
    [
      'deny CIDR with ports: other port',
      { deny: '10.0.0.0/8:22', host: '10.0.0.1', port: 443, allowed: true },
    ],
    [
      'deny CIDR with ports: listed port',
      { deny: '10.0.0.0/8:22,2222', host: '10.0.0.1', port: 2222, allowed: false },
    ],
    [
      'deny CIDR with port range',
      { deny: '10.0.0.0/8:8000-8999', host: '10.0.0.1', port: 8080, allowed: false },
    ],
    [
      'deny CIDR reached through a name (DNS smuggling)',
      {
        deny: '127.0.0.0/8',
        host: 'localhost',
        dns: ['127.0.0.1'],
        allowed: false,
        reason: /localhost resolves to 127\.0\.0\.1, which matches --deny-destinations entry "127.0.0.0\/8"/,
      },
    ],
    [
      'deny: one bad answer among several denies the name',
      { deny: '127.0.0.0/8', host: 'multi.example', dns: ['10.0.0.1', '127.0.0.2'], allowed: false },
    ],
    [
      'deny: a numeric name resolving to loopback',
      { deny: '127.0.0.0/8', host: '2130706433', dns: ['127.0.0.1'], allowed: false },
    ],
    [
      'deny IPv4 CIDR catches IPv4-mapped IPv6',
      { deny: '10.0.0.0/8', host: '::ffff:10.0.0.1', allowed: false },
    ],
    ['deny IPv4-mapped CIDR catches IPv4', { deny: '::ffff:10.0.0.0/104', host: '10.9.9.9', allowed: false }],
    ['deny IPv6 CIDR', { deny: 'fd00::/8', host: 'fd12::1', allowed: false }],
    [
      'deny IPv6 CIDR with brackets and port',
      { deny: '[fd00::]/8:443', host: 'fd12::1', port: 443, allowed: false },
    ],
    [
      'deny IPv6 CIDR with brackets, other port',
      { deny: '[fd00::]/8:443', host: 'fd12::1', port: 80, allowed: true },
    ],
    ['deny IPv6 with a zone in the dial', { deny: 'fe80::/10', host: 'fe80::1%eth0', allowed: false }],
    [
      'deny exact name',
      { deny: 'secret.example.com', host: 'SECRET.example.com.', dns: ['1.2.3.4'], allowed: false },
    ],
    [
      'deny wildcard name',
      {
        deny: '*.corp',
        host: 'db.eu.corp',
        dns: ['1.2.3.4'],
        allowed: false,
        reason: /matches --deny-destinations entry "\*\.corp"/,
      },
    ],
    [
      'deny wildcard does not match the apex',
      { deny: '*.corp', host: 'corp', dns: ['1.2.3.4'], allowed: true },
    ],
    [
      'deny wildcard does not match a lookalike',
      { deny: '*.corp', host: 'evilcorp', dns: ['1.2.3.4'], allowed: true },
    ],
    ['deny name does not apply to IP literals', { deny: '*.corp', host: '1.2.3.4', allowed: true }],
    ['deny *', { deny: '*', host: '1.2.3.4', allowed: false }],
    ['deny *:25', { deny: '*:25', host: 'mail.example', dns: ['1.2.3.4'], port: 25, allowed: false }],
    ['allow list: inside', { allow: '10.0.0.0/8', host: '10.1.1.1', allowed: true }],
    [
      'allow list: outside',
      {
        allow: '10.0.0.0/8',
        host: '192.168.1.1',
        allowed: false,
        reason: /192\.168\.1\.1:443 is not in --allow-destinations/,
      },
    ],
    ['allow list: wrong port', { allow: '10.0.0.0/8:443,8443', host: '10.1.1.1', port: 80, allowed: false }],
    [
      'allow list: second port',
      { allow: '10.0.0.0/8:443,8443', host: '10.1.1.1', port: 8443, allowed: true },
    ],
    [
      'allow list: a name resolving inside the CIDR',
      { allow: '10.0.0.0/8', host: 'svc.local', dns: ['10.1.1.1'], allowed: true },
    ],
    [
      'allow list: a name with one answer outside the CIDR',
      {
        allow: '10.0.0.0/8',
        host: 'svc.local',
        dns: ['10.1.1.1', '8.8.8.8'],
        allowed: false,
        reason: /resolves to 8\.8\.8\.8, which is not allowed/,
      },
    ],
    [
      'allow list: wildcard name',
      {
        allow: '*.svc.cluster.local:443',
        host: 'api.ns.svc.cluster.local',
        dns: ['172.16.0.1'],
        allowed: true,
      },
    ],
    [
      'allow list: wildcard name, wrong port',
      {
        allow: '*.svc.cluster.local:443',
        host: 'api.ns.svc.cluster.local',
        dns: ['172.16.0.1'],
        port: 80,
        allowed: false,
      },
    ],
    [
      'allow list: name entry does not allow the IP literal',
      { allow: 'api.example', host: '1.2.3.4', allowed: false },
    ],
    [
      'allowed name still subject to IP deny (smuggling)',
      { allow: '*.example', deny: '127.0.0.0/8', host: 'x.example', dns: ['127.0.0.1'], allowed: false },
    ],
    ['allow list: IPv6', { allow: '[fd00::]/8:443', host: 'fd00::5', port: 443, allowed: true }],
    ['allow list: IPv4 entry vs IPv6 address', { allow: '0.0.0.0/0', host: '2001:db8::1', allowed: false }],
    ['allow *: everything but metadata', { allow: '*', host: '2001:db8::1', allowed: true }],
    ['deny wins over allow', { allow: '10.0.0.0/8', deny: '10.0.0.0/24', host: '10.0.0.7', allowed: false }],
  ];

  for (const [title, c] of cases) {
    it(title, () => assertVerdict(createDestinationPolicy({ allow: c.allow, deny: c.deny }), c));
  }

  it('checks names before DNS: a denied name is decided without its addresses', () => {
    const policy = createDestinationPolicy({ deny: '*.corp' });
    assert.equal(checkName(policy, 'db.corp', 5432).allowed, false);
    assert.equal(checkName(policy, 'db.example', 5432).allowed, true);
  });

  it('refuses a name that resolved to nothing or to a non-address', () => {
    assert.equal(checkResolved(defaultDestinationPolicy, 'x.example', 80, []).allowed, false);
    assert.equal(checkResolved(defaultDestinationPolicy, 'x.example', 80, ['not-an-ip']).allowed, false);
  });
});

describe("destination policy: the agent's own health and admin ports", () => {
  const own = (allow?: string) =>
    withOwnEndpoints(createDestinationPolicy({ allow }), [8093, 8094], ['10.1.2.3', 'fd00::7', 'not-an-ip']);
  const cases: [string, Case][] = [
    ['its pod address, health port', { host: '10.1.2.3', port: 8093, allowed: false, reason: /own address/ }],
    ['its IPv6 address, admin port', { host: 'fd00::7', port: 8094, allowed: false }],
    ['its pod address, another port', { host: '10.1.2.3', port: 443, allowed: true }],
    ['another address, the same port', { host: '10.1.2.4', port: 8093, allowed: true }],
    [
      'loopback opened by an exact entry: still not its own ports',
      { allow: '*,127.0.0.1', host: '127.0.0.1', port: 8094, allowed: false, reason: /own address/ },
    ],
    [
      '0.0.0.0 reaches its own ports too',
      { allow: '*,127.0.0.1', host: '0.0.0.0', port: 8093, allowed: false, reason: /own address/ },
    ],
    [
      'loopback opened by an exact entry: other ports',
      { allow: '*,127.0.0.1', host: '127.0.0.1', port: 8080, allowed: true },
    ],
    ['a range does not open them', { allow: '10.0.0.0/8', host: '10.1.2.3', port: 8093, allowed: false }],
    [
      'an exact address without ports does not open them',
      { allow: '*,10.1.2.3', host: '10.1.2.3', port: 8093, allowed: false, reason: /own address/ },
    ],
    [
      'an exact address listing the port does',
      { allow: '*,10.1.2.3:8093', host: '10.1.2.3', port: 8093, allowed: true },
    ],
  ];
  for (const [title, c] of cases) {
    it(title, () => assertVerdict(own(c.allow), c));
  }
  it('names the entry that would allow it', () => {
    const verdict = checkName(own(), '10.1.2.3', 8093);
    assert.equal(verdict.allowed, false);
    assert.match(
      (verdict as { reason: string }).reason,
      /10\.1\.2\.3 is this agent's own address and 8093 its health or admin port \(allow it explicitly with --allow-destinations 10\.1\.2\.3:8093\)/,
    );
  });
  it('no ports (both 0): nothing extra denied', () => {
    const policy = withOwnEndpoints(createDestinationPolicy(), [0, 0], ['10.1.2.3']);
    assert.equal(policy.ownEndpoints.length, 0);
  });
});

describe('guardedDial', () => {
  /** The test dials go to loopback, which the default policy denies. */
  const loopbackAllowed = createDestinationPolicy({ allow: '*,127.0.0.1,::1' });
  interface Log {
    lookups: string[];
    dials: { ip: string; port: number; ms: number }[];
  }
  function deps(answers: Record<string, string[]>, dialResult: (ip: string) => string | Error) {
    const log: Log = { lookups: [], dials: [] };
    return {
      log,
      deps: {
        async lookup(host: string) {
          log.lookups.push(host);
          const a = answers[host];
          if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
          return a;
        },
        async dial(ip: string, port: number, ms: number) {
          log.dials.push({ ip, port, ms });
          const r = dialResult(ip);
          if (r instanceof Error) throw r;
          return r;
        },
        lookupError: (err: unknown, host: string) =>
          new KnatsError(ErrorCode.DialDns, `${host}: ${(err as Error).message}`),
      },
    };
  }
  const isCode = (code: string) => (err: unknown) => err instanceof KnatsError && err.code === code;

  it('dials the checked address, never the name, and looks up once', async () => {
    const { log, deps: d } = deps({ 'web.example': ['10.0.0.5'] }, (ip) => `socket-${ip}`);
    const r = await guardedDial(defaultDestinationPolicy, { host: 'web.example', port: 80 }, 5000, d);
    assert.deepEqual(r, { socket: 'socket-10.0.0.5', ip: '10.0.0.5' });
    assert.deepEqual(log.lookups, ['web.example']);
    assert.deepEqual(
      log.dials.map((x) => x.ip),
      ['10.0.0.5'],
    );
  });

  it('denies before any lookup when the name is denied', async () => {
    const { log, deps: d } = deps({}, () => 'never');
    await assert.rejects(
      guardedDial(defaultDestinationPolicy, { host: 'metadata.google.internal', port: 80 }, 5000, d),
      isCode(ErrorCode.DestinationDenied),
    );
    assert.deepEqual(log.lookups, []);
    assert.deepEqual(log.dials, []);
  });

  it('denies before any dial when one DNS answer is denied', async () => {
    const policy = createDestinationPolicy({ deny: '127.0.0.0/8' });
    const { log, deps: d } = deps({ sneaky: ['10.0.0.1', '127.0.0.1'] }, () => 'never');
    await assert.rejects(
      guardedDial(policy, { host: 'sneaky', port: 80 }, 5000, d),
      (err: unknown) =>
        err instanceof KnatsError &&
        err.code === ErrorCode.DestinationDenied &&
        /sneaky resolves to 127\.0\.0\.1/.test(err.message),
    );
    assert.deepEqual(log.dials, []);
  });

  it('skips the lookup for IP literals and checks them', async () => {
    const { log, deps: d } = deps({}, (ip) => ip);
    assert.equal((await guardedDial(loopbackAllowed, { host: '::1', port: 80 }, 5000, d)).ip, '::1');
    await assert.rejects(
      guardedDial(defaultDestinationPolicy, { host: '169.254.169.254', port: 80 }, 5000, d),
      isCode(ErrorCode.DestinationDenied),
    );
    assert.deepEqual(log.lookups, []);
  });

  it('falls through to the next address and reports the first error when all fail', async () => {
    const refused = new KnatsError(ErrorCode.DialRefused, 'refused');
    const ok = deps({ dual: ['::1', '127.0.0.1'] }, (ip) => (ip === '::1' ? refused : 'v4'));
    assert.equal(
      (await guardedDial(loopbackAllowed, { host: 'dual', port: 80 }, 5000, ok.deps)).ip,
      '127.0.0.1',
    );
    assert.deepEqual(
      ok.log.dials.map((x) => x.ip),
      ['::1', '127.0.0.1'],
    );
    const bad = deps({ dual: ['::1', '127.0.0.1'] }, (ip) => new KnatsError(ErrorCode.DialRefused, ip));
    await assert.rejects(
      guardedDial(loopbackAllowed, { host: 'dual', port: 80 }, 5000, bad.deps),
      (err: unknown) => err instanceof KnatsError && err.message === '::1',
    );
  });

  it('shares the timeout between addresses as Go does (at least 2 s each while time remains)', async () => {
    const many = deps({ m: ['10.0.0.1', '10.0.0.2'] }, () => new KnatsError(ErrorCode.DialTimeout, 't'));
    await assert.rejects(guardedDial(defaultDestinationPolicy, { host: 'm', port: 80 }, 10_000, many.deps));
    assert.ok(
      many.log.dials[0]!.ms >= 4900 && many.log.dials[0]!.ms <= 5000,
      `first share ${many.log.dials[0]!.ms}`,
    );
    const short = deps(
      { m: ['10.0.0.1', '10.0.0.2', '10.0.0.3'] },
      () => new KnatsError(ErrorCode.DialTimeout, 't'),
    );
    await assert.rejects(guardedDial(defaultDestinationPolicy, { host: 'm', port: 80 }, 3000, short.deps));
    assert.ok(
      short.log.dials[0]!.ms >= 1900 && short.log.dials[0]!.ms <= 2000,
      `short share ${short.log.dials[0]!.ms}`,
    );
  });

  it('does not retry a cancelled dial on the next address', async () => {
    const c = deps({ two: ['10.0.0.1', '10.0.0.2'] }, () => new KnatsError(ErrorCode.DialCancelled, 'stop'));
    await assert.rejects(
      guardedDial(defaultDestinationPolicy, { host: 'two', port: 80 }, 5000, c.deps),
      isCode(ErrorCode.DialCancelled),
    );
    assert.equal(c.log.dials.length, 1);
  });

  it('maps lookup failures with lookupError and times out a hanging lookup', async () => {
    const nx = deps({}, () => 'x');
    await assert.rejects(
      guardedDial(defaultDestinationPolicy, { host: 'nx.example', port: 80 }, 5000, nx.deps),
      isCode(ErrorCode.DialDns),
    );
    const hanging = {
      lookup: () => new Promise<string[]>(() => {}),
      dial: async () => 'x',
      lookupError: (err: unknown) => new KnatsError(ErrorCode.DialDns, String(err)),
    };
    const started = Date.now();
    await assert.rejects(
      guardedDial(defaultDestinationPolicy, { host: 'slow.example', port: 80 }, 100, hanging),
      isCode(ErrorCode.DialTimeout),
    );
    assert.ok(Date.now() - started < 1000);
  });
});
