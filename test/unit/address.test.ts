import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHostName, parseDialAddress, parseIp } from '../../broker/address.js';
import { ErrorCode, KnatsError } from '../../broker/errors.js';

const badAddress = (why: RegExp) => (err: unknown) =>
  err instanceof KnatsError && err.code === ErrorCode.BadAddress && why.test(err.message);

describe('dial addresses: the host must be a host name or an IP literal', () => {
  for (const [address, host] of [
    ['kubernetes.default.svc.cluster.local.:80', 'kubernetes.default.svc.cluster.local.'],
    ['My-Host_1.example:80', 'My-Host_1.example'],
    ['10.0.0.1:80', '10.0.0.1'],
    ['[::1]:80', '::1'],
    ['[fe80::1%eth0]:80', 'fe80::1%eth0'],
    ['[::ffff:10.0.0.1]:80', '::ffff:10.0.0.1'],
    ['[10.0.0.1]:80', '10.0.0.1'],
  ] as const) {
    it(`accepts ${address}`, () => assert.deepEqual(parseDialAddress(address), { host, port: 80 }));
  }

  for (const [title, address, why] of [
    ['a NUL byte (getaddrinfo stops there)', 'localhost\0.svc.cluster.local:80', /invalid character/],
    ['a control character', 'a\x1b[2J.example:80', /invalid character/],
    ['a newline', 'a\nb.example:80', /invalid character/],
    ['a space', 'a b:80', /invalid character/],
    ['a percent sign', 'a%2e.example:80', /invalid character/],
    ['a non-ASCII letter', 'exämple.com:80', /invalid character/],
    ['an empty label', 'a..b:80', /not a host name/],
    ['a label starting with -', '-a.example:80', /not a host name/],
    ['a label of 64 characters', `${'a'.repeat(64)}.example:80`, /not a host name/],
    ['a name of 254 characters', `${'a.'.repeat(127)}ab:80`, /not a host name/],
    ['a short IPv4 form', '127.1:80', /not a host name/],
    ['a decimal IPv4 form', '2130706433:80', /not a host name/],
    ['an octal IPv4 form', '0177.0.0.1:80', /not a host name/],
    ['a hex IPv4 form', '0x7f.0.0.1:80', /not a host name/],
    ['0', '0:80', /not a host name/],
    ['a name in brackets', '[localhost]:80', /not an IP address inside the brackets/],
    ['a bad zone', '[fe80::1%eth0/x]:80', /not an IP address inside the brackets/],
  ] as const) {
    it(`refuses ${title}`, () => assert.throws(() => parseDialAddress(address), badAddress(why)));
  }

  it('repeats at most 128 characters of a hostile address', () => {
    for (const address of [`${'a'.repeat(5000)}:80`, `${'a'.repeat(900)}\0:80`]) {
      assert.throws(
        () => parseDialAddress(address),
        (err: unknown) => err instanceof KnatsError && err.message.length < 300,
      );
    }
  });

  it('escapes what it repeats (no raw control characters in the message)', () => {
    assert.throws(
      () => parseDialAddress('a\x1b[2J\0.example:80'),
      (err: unknown) => err instanceof KnatsError && [...err.message].every((c) => c.charCodeAt(0) >= 0x20),
    );
  });
});

describe('host names', () => {
  it('accepts a 253-character name and a 63-character label', () => {
    assert.ok(isHostName(`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`));
  });
  it('ignores one trailing dot only', () => {
    assert.ok(isHostName('svc.local.'));
    assert.ok(!isHostName('svc.local..'));
    assert.ok(!isHostName('.'));
  });
});

describe('IP literals', () => {
  it('takes a zone of interface-name characters only', () => {
    assert.ok(parseIp('fe80::1%eth0.100'));
    assert.equal(parseIp('fe80::1%'), undefined);
    assert.equal(parseIp('fe80::1%eth0\0'), undefined);
  });
});
