import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  dialResponseText,
  ErrorCode,
  errorFromPeer,
  httpStatusFor,
  KnatsError,
  MAX_PEER_MESSAGE_BYTES,
  parseErrorCode,
  reasonLabel,
} from '../../broker/errors.js';
import { redactUserinfo } from '../../broker/redact.js';

describe('errors from peers', () => {
  for (const code of [
    'constructor',
    '__proto__',
    'toString',
    'hasOwnProperty',
    'valueOf',
    '',
    'KNATS_FUTURE',
  ]) {
    it(`maps the peer code ${JSON.stringify(code)} to the generic code`, () => {
      assert.equal(parseErrorCode(code), ErrorCode.DialFailed);
      const err = errorFromPeer(code, 'boom');
      assert.equal(err.code, ErrorCode.DialFailed);
      assert.equal(httpStatusFor(err.code), 502);
      assert.equal(reasonLabel(err.code), 'error_response');
    });
  }

  it('keeps a known code and its presentation', () => {
    const err = errorFromPeer(ErrorCode.DialRefused, 'dial tcp 10.0.0.1:80: connection refused');
    assert.equal(err.code, ErrorCode.DialRefused);
    assert.equal(err.message, 'dial tcp 10.0.0.1:80: connection refused');
    assert.equal(httpStatusFor(err.code), 502);
    assert.equal(reasonLabel(err.code), 'refused');
  });

  it('uses the code as the message when the peer sent none', () => {
    assert.equal(errorFromPeer(ErrorCode.DialTimeout, '').message, ErrorCode.DialTimeout);
  });

  it('cuts a peer message to 1 KiB and says so', () => {
    const err = errorFromPeer(ErrorCode.DialFailed, 'x'.repeat(300_000));
    assert.ok(err.message.startsWith('x'.repeat(MAX_PEER_MESSAGE_BYTES)));
    assert.match(err.message, /\.\.\. \(298976 more bytes cut\)$/);
    assert.ok(err.message.length < MAX_PEER_MESSAGE_BYTES + 64);
  });

  it('counts bytes, not characters', () => {
    const err = errorFromPeer(ErrorCode.DialFailed, 'é'.repeat(1000));
    assert.ok(Buffer.byteLength(err.message) < MAX_PEER_MESSAGE_BYTES + 64);
  });

  it('escapes control characters (terminal escapes, forged log lines)', () => {
    const err = errorFromPeer(ErrorCode.DialFailed, 'a\x1b[2Jb\nforged line\0');
    assert.equal(err.message, 'a\\x1b[2Jb\\x0aforged line\\x00');
  });

  it('never answers undefined for a value that only claims to be a code', () => {
    assert.equal(httpStatusFor('constructor' as ErrorCode), 502);
    assert.equal(reasonLabel('__proto__' as ErrorCode), 'error_response');
  });

  it('bounds the DIAL_RSP text whatever built the error', () => {
    const text = dialResponseText(new KnatsError(ErrorCode.DialFailed, 'y'.repeat(50_000)));
    assert.ok(text.length < MAX_PEER_MESSAGE_BYTES + 100, `${text.length}`);
    assert.equal(dialResponseText(new KnatsError(ErrorCode.NoAgent, 'whatever')), 'No agent available');
  });
});

describe('secrets in text', () => {
  it('redacts a URL userinfo up to its last @, with or without a scheme, and nothing else', () => {
    const cases: [string, string][] = [
      ['nats://user:S3CR@tailpart@host:4222', 'nats://***@host:4222'],
      ['nats://user:S3CR/tailpart@host', 'nats://***@host'],
      ['servers nats://a:b@h1:4222,nats://c:d@h2:4222', 'servers nats://***@h1:4222,nats://***@h2:4222'],
      [
        '--nats-url: "user:S3CRET@127.0.0.1:1" is not a NATS URL',
        '--nats-url: "***@127.0.0.1:1" is not a NATS URL',
      ],
      ['nats://127.0.0.1:4222 at 10:30', 'nats://127.0.0.1:4222 at 10:30'],
      ['mail ops@example.com', 'mail ops@example.com'],
    ];
    for (const [text, redacted] of cases) assert.equal(redactUserinfo(text), redacted, text);
  });
});
