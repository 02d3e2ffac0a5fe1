/**
 * Both front doors on mTLS TCP, with certificates generated at run time by
 * openssl: curl through HTTP CONNECT over TLS, the gRPC test client over TLS,
 * clients without a certificate or with one from another CA refused at the
 * handshake, --tls-min-version and --cipher-suites enforced, and server
 * certificates reloaded from disk without dropping live tunnels.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { createLogger, silentLogger } from '../../broker/logging.js';
import { freePort } from '../../broker/nats-server/local-server.js';
import { frontendConfig } from '../../cli/config.js';
import { type RunningFrontend, startFrontend } from '../../frontend/frontend.js';
import { createPki, issueCert, type KeyPair, type Pki, replaceKeyPair, serialOf } from '../helpers/certs.js';
import { connectOnce, connectRequest, DoorClient, type DoorTarget } from '../helpers/connect-client.js';
import {
  type Destination,
  echoServer,
  httpServer,
  randomBytesSeeded,
  sha256,
} from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const run = promisify(execFile);

function tlsFlags(server: KeyPair, ca: KeyPair): string[] {
  return ['--server-cert', server.cert, '--server-key', server.key, '--server-ca-cert', ca.cert];
}

/** An in-process frontend listening only on mTLS TCP (no Unix socket). */
async function tcpFrontend(
  fleet: Fleet,
  mode: 'grpc' | 'http-connect',
  extra: string[],
): Promise<RunningFrontend & { port: number }> {
  const { config } = frontendConfig(
    [
      '--nats-url',
      fleet.nats.url,
      '--mode',
      mode,
      '--server-port',
      String(await freePort()),
      '--health-port',
      '0',
      '--admin-port',
      '0',
      ...extra,
    ],
    {},
  );
  const logger = process.env.KNATS_TEST_LOG
    ? createLogger({ name: `fe-${mode}`, level: 'debug' })
    : silentLogger();
  const frontend = await startFrontend({ ...config, logger });
  fleet.frontends.push(frontend);
  return Object.assign(frontend, { port: frontend.tcpPort! });
}

interface HandshakeResult {
  readonly ok: boolean;
  readonly code?: string;
  readonly serial?: string;
  readonly protocol?: string | null;
  readonly cipher?: string;
  /** Whatever the server sent after we wrote `probe` (empty when it refused us). */
  readonly reply: string;
}

/**
 * A TLS client: handshakes, writes `probe`, and reports whether the server
 * let it in (a TLS 1.3 server refuses a client certificate after the
 * client's side of the handshake completed, so "ok" means the server
 * answered). An empty probe resolves at the end of the client's handshake.
 */
function tryHandshake(
  port: number,
  options: ConnectionOptions,
  probe = 'GET / HTTP/1.1\r\n\r\n',
): Promise<HandshakeResult> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ...options });
    let reply = '';
    let serial: string | undefined;
    let protocol: string | null | undefined;
    let cipher: string | undefined;
    const timer = setTimeout(() => socket.destroy(new Error('timeout')), 5000);
    socket.on('secureConnect', () => {
      serial = socket.getPeerCertificate().serialNumber;
      protocol = socket.getProtocol();
      cipher = socket.getCipher().standardName;
      if (probe === '') {
        // Only the handshake matters (TLS 1.2: the server has verified our certificate by now).
        clearTimeout(timer);
        resolve({ ok: true, serial, protocol, cipher, reply });
        socket.destroy();
        return;
      }
      socket.write(probe);
    });
    socket.on('data', (d: Buffer) => {
      reply += d.toString('latin1');
      if (reply.includes('\r\n\r\n')) socket.end();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ ok: false, code: err.code ?? err.message, reply });
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ ok: reply.length > 0, serial, protocol, cipher, reply });
    });
  });
}

/** The serial number of the certificate a TLS listener presents now (ALPN h2 for the gRPC door). */
async function presentedSerial(port: number, pki: Pki, alpn: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      ca: readFileSync(pki.ca.cert),
      cert: readFileSync(pki.client.cert),
      key: readFileSync(pki.client.key),
      ALPNProtocols: [alpn],
    });
    socket.once('secureConnect', () => {
      resolve(socket.getPeerCertificate().serialNumber);
      socket.destroy();
    });
    socket.once('error', reject);
  });
}

/** TLS handshakes the CONNECT door refused (knats_client_errors_total{reason="tls_handshake"}). */
async function handshakeRefusals(healthPort: number): Promise<number> {
  const { body } = await fetchText(healthPort, '/metrics');
  const line = body
    .split('\n')
    .find((l) => l.includes('knats_client_errors_total{') && l.includes('reason="tls_handshake"'));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

function clientFiles(pki: Pki, client: KeyPair | null = pki.client): ConnectionOptions {
  return {
    ca: readFileSync(pki.ca.cert),
    ...(client ? { cert: readFileSync(client.cert), key: readFileSync(client.key) } : {}),
  };
}

function grpcCredentials(pki: Pki, client: KeyPair | null = pki.client): grpc.ChannelCredentials {
  return client
    ? grpc.credentials.createSsl(
        readFileSync(pki.ca.cert),
        readFileSync(client.key),
        readFileSync(client.cert),
      )
    : grpc.credentials.createSsl(readFileSync(pki.ca.cert));
}

describe('mTLS TCP front doors', () => {
  const fleet = new Fleet();
  let pki: Pki;
  let connectFe: RunningFrontend & { port: number };
  let grpcFe: RunningFrontend & { port: number };
  let web: Destination;
  let echo: Destination;

  before(async () => {
    await fleet.startNats();
    pki = createPki(join(fleet.dir, 'pki'));
    connectFe = await tcpFrontend(fleet, 'http-connect', tlsFlags(pki.server, pki.ca));
    grpcFe = await tcpFrontend(fleet, 'grpc', tlsFlags(pki.server, pki.ca));
    await fleet.agent();
    web = await httpServer('web');
    echo = await echoServer();
    for (const fe of [connectFe, grpcFe]) {
      await eventually(
        async () => (await fetchText(fe.healthPort, '/readyz')).status === 200,
        'frontend ready',
      );
    }
  });
  after(async () => {
    await web.close();
    await echo.close();
    await fleet.stop();
  });

  const curlArgs = (port: number, client: KeyPair | undefined) => [
    '-sS',
    '--max-time',
    '10',
    '--proxytunnel',
    '--proxy',
    `https://127.0.0.1:${port}`,
    '--proxy-cacert',
    pki.ca.cert,
    ...(client ? ['--proxy-cert', client.cert, '--proxy-key', client.key] : []),
    '-w',
    '\n%{http_connect} %{http_code}',
  ];

  it('serves curl through HTTP CONNECT over mTLS', async () => {
    const { stdout } = await run('curl', [
      ...curlArgs(connectFe.port, pki.client),
      `http://127.0.0.1:${web.port}/via-mtls`,
    ]);
    assert.equal(stdout, 'web /via-mtls\n200 200');
  });

  it('refuses curl without a client certificate, or with one from another CA, at the handshake', async () => {
    const refusalsBefore = await handshakeRefusals(connectFe.healthPort);
    for (const client of [undefined, pki.otherClient]) {
      const failed = await run('curl', [
        ...curlArgs(connectFe.port, client),
        `http://127.0.0.1:${web.port}/`,
      ]).then(
        () => undefined,
        (err: { code: number; stderr: string; stdout: string }) => err,
      );
      assert.ok(
        failed,
        `curl ${client ? 'with a foreign certificate' : 'without a certificate'} got through`,
      );
      // curl 7.88 reports the TLS 1.3 alert as "(56) Proxy CONNECT aborted"; others name SSL.
      assert.ok([35, 56].includes(failed.code), `curl exit ${failed.code}: ${failed.stderr}`);
      assert.doesNotMatch(failed.stdout, /web/);
    }
    assert.equal(
      await handshakeRefusals(connectFe.healthPort),
      refusalsBefore + 2,
      'refused in the TLS handshake',
    );
    assert.equal(web.accepted, 1, 'only the authenticated curl reached the destination');
  });

  it('refuses node TLS clients without a certificate or with a foreign one, before any HTTP', async () => {
    const refusalsBefore = await handshakeRefusals(connectFe.healthPort);
    const noCert = await tryHandshake(connectFe.port, clientFiles(pki, null));
    assert.equal(noCert.ok, false);
    assert.match(noCert.code ?? '', /CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE|ECONNRESET/);
    const foreign = await tryHandshake(connectFe.port, clientFiles(pki, pki.otherClient));
    assert.equal(foreign.ok, false);
    // Node verifies the chain after OpenSSL's handshake and closes without an alert: no HTTP either way.
    assert.equal(foreign.reply, '');
    const good = await tryHandshake(connectFe.port, clientFiles(pki));
    assert.equal(good.ok, true);
    assert.match(good.reply, /^HTTP\/1\.1 405 /, 'an authenticated client reaches HTTP');
    assert.equal(await handshakeRefusals(connectFe.healthPort), refusalsBefore + 2);
  });

  it('keeps the bytes after the header and moves 4 MiB byte-exact over TLS', async () => {
    const target: DoorTarget = {
      port: connectFe.port,
      ca: pki.ca.cert,
      cert: pki.client.cert,
      key: pki.client.key,
    };
    const client = await DoorClient.open(target);
    const payload = randomBytesSeeded(4 * 1024 * 1024, 41);
    await client.write(Buffer.concat([Buffer.from(connectRequest(echo.address)), payload.subarray(0, 1000)]));
    const head = await client.readHead();
    assert.equal(head.statusLine, 'HTTP/1.1 200 Connection Established');
    assert.deepEqual(Object.keys(head.headers), [], 'no headers on the 200');
    const echoed = client.readBytes(payload.length);
    await client.writeAll(payload.subarray(1000));
    assert.equal(sha256(await echoed), sha256(payload));
    client.close();
  });

  it('speaks no HTTP/2 on the CONNECT door: an h2-only client is refused in the handshake', async () => {
    const h2 = await tryHandshake(connectFe.port, { ...clientFiles(pki), ALPNProtocols: ['h2'] });
    assert.equal(h2.ok, false);
    assert.match(h2.code ?? '', /NO_APPLICATION_PROTOCOL/);
    const both = await tryHandshake(connectFe.port, {
      ...clientFiles(pki),
      ALPNProtocols: ['h2', 'http/1.1'],
    });
    assert.equal(both.ok, true, 'a client offering http/1.1 too gets HTTP/1.1');
  });

  it('answers the error statuses over TLS too', async () => {
    const target: DoorTarget = {
      port: connectFe.port,
      ca: pki.ca.cert,
      cert: pki.client.cert,
      key: pki.client.key,
    };
    const { head, body } = await connectOnce(target, connectRequest('127.0.0.1:0'));
    assert.equal(head.status, 400);
    assert.match(body, /KNATS_BAD_ADDRESS/);
  });

  it('serves the gRPC test client over mTLS', async () => {
    const client = new ProxyStreamClient(`127.0.0.1:${grpcFe.port}`, grpcCredentials(pki));
    const dial = await client.dial(web.address);
    assert.equal(dial.error, '');
    client.send(dial.connectID, Buffer.from('GET /grpc-mtls HTTP/1.0\r\n\r\n'));
    assert.equal(await client.waitClosed(dial.connectID), '');
    assert.match(client.dataOf(dial.connectID).toString(), /web \/grpc-mtls$/);
    client.close();
  });

  it('refuses gRPC clients without a certificate or with a foreign one', async () => {
    for (const cert of [null, pki.otherClient]) {
      const client = new ProxyStreamClient(`127.0.0.1:${grpcFe.port}`, grpcCredentials(pki, cert));
      void client.dial(web.address);
      await eventually(() => client.ended, 'the gRPC stream fails');
      assert.equal((client.streamError as grpc.ServiceError | undefined)?.code, grpc.status.UNAVAILABLE);
      client.close();
    }
  });

  it('enforces --tls-min-version on both doors', async () => {
    const tls12 = { ...clientFiles(pki), maxVersion: 'TLSv1.2' as const };
    const byDefault = await tryHandshake(connectFe.port, tls12);
    assert.equal(byDefault.ok, true, 'TLS 1.2 is accepted by default');
    assert.equal(byDefault.protocol, 'TLSv1.2');
    const strict = await tcpFrontend(fleet, 'http-connect', [
      ...tlsFlags(pki.server, pki.ca),
      '--tls-min-version',
      'VersionTLS13',
    ]);
    const strictGrpc = await tcpFrontend(fleet, 'grpc', [
      ...tlsFlags(pki.server, pki.ca),
      '--tls-min-version',
      'VersionTLS13',
    ]);
    for (const port of [strict.port, strictGrpc.port]) {
      const refused = await tryHandshake(port, {
        ...tls12,
        ALPNProtocols: port === strict.port ? ['http/1.1'] : ['h2'],
      });
      assert.equal(refused.ok, false, `TLS 1.2 refused on ${port}`);
      assert.match(refused.code ?? '', /PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|ECONNRESET/);
    }
    const tls13 = await tryHandshake(strict.port, clientFiles(pki));
    assert.equal(tls13.protocol, 'TLSv1.3');
    assert.equal(tls13.ok, true);
    await Promise.all([strict.stop({ immediate: true }), strictGrpc.stop({ immediate: true })]);
  });

  it('enforces --cipher-suites (Go names) for TLS 1.2 on both doors', async () => {
    const flags = [
      ...tlsFlags(pki.server, pki.ca),
      '--cipher-suites',
      'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256',
    ];
    const fe = await tcpFrontend(fleet, 'http-connect', flags);
    const feGrpc = await tcpFrontend(fleet, 'grpc', flags);
    for (const [port, alpn] of [
      [fe.port, 'http/1.1'],
      [feGrpc.port, 'h2'],
    ] as const) {
      const base = { ...clientFiles(pki), maxVersion: 'TLSv1.2' as const, ALPNProtocols: [alpn] };
      const other = await tryHandshake(port, { ...base, ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384' });
      assert.equal(other.ok, false, `a suite outside the list is refused (${alpn})`);
      assert.match(other.code ?? '', /HANDSHAKE_FAILURE|NO_SHARED_CIPHER|ECONNRESET/);
      const listed = await tryHandshake(
        port,
        { ...base, ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' },
        alpn === 'h2' ? '' : undefined,
      );
      assert.equal(listed.cipher, 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256');
    }
    const tls13 = await tryHandshake(fe.port, clientFiles(pki));
    assert.equal(tls13.ok, true, 'TLS 1.3 suites are not configurable (as in Go) and stay on');
    await Promise.all([fe.stop({ immediate: true }), feGrpc.stop({ immediate: true })]);
  });

  it('rejects bad TLS flags with a one-line error naming the flag', () => {
    const base = [
      '--nats-url',
      'nats://127.0.0.1:4222',
      '--server-port',
      '8131',
      ...tlsFlags(pki.server, pki.ca),
    ];
    const cases: [string[], RegExp][] = [
      [
        ['--cipher-suites', 'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,NOPE'],
        /^--cipher-suites: unknown cipher suite "NOPE"/,
      ],
      [
        ['--cipher-suites', 'TLS_RSA_WITH_RC4_128_SHA'],
        /^--cipher-suites: cipher suite TLS_RSA_WITH_RC4_128_SHA .*not supported/,
      ],
      [
        ['--tls-min-version', 'VersionTLS10'],
        /^--tls-min-version: VersionTLS10 is below the TLS 1\.2 minimum/,
      ],
      [['--tls-min-version', 'TLS1.3'], /^--tls-min-version: unknown TLS version/],
    ];
    for (const [args, pattern] of cases) {
      assert.throws(
        () => frontendConfig([...base, ...args], {}),
        (err: Error) => pattern.test(err.message),
      );
    }
    assert.throws(
      () =>
        frontendConfig(
          [
            '--nats-url',
            'nats://127.0.0.1:4222',
            '--server-port',
            '8131',
            '--server-cert',
            pki.server.cert,
            '--server-key',
            pki.server.key,
          ],
          {},
        ),
      /--server-ca-cert/,
      'a TCP frontend without a client CA refuses to start',
    );
  });

  it('refuses to start with unreadable or mismatched certificate files', async () => {
    const mismatched = [...tlsFlags({ cert: pki.server.cert, key: pki.client.key }, pki.ca)];
    await assert.rejects(
      tcpFrontend(fleet, 'http-connect', mismatched),
      /--server-cert\/--server-key\/--server-ca-cert/,
    );
    const missing = [...tlsFlags({ cert: join(pki.dir, 'nope.pem'), key: pki.server.key }, pki.ca)];
    await assert.rejects(tcpFrontend(fleet, 'grpc', missing), /--server-cert .*ENOENT/);
  });

  it('reloads certificates from disk without dropping live tunnels', async () => {
    // Both doors serve the same files, as a sidecar would mount them.
    const dir = join(fleet.dir, 'rotating');
    mkdirSync(dir);
    const live: KeyPair = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') };
    copyFileSync(pki.server.cert, live.cert);
    copyFileSync(pki.server.key, live.key);
    const fe = await tcpFrontend(fleet, 'http-connect', tlsFlags(live, pki.ca));
    const feGrpc = await tcpFrontend(fleet, 'grpc', tlsFlags(live, pki.ca));
    const firstSerial = serialOf(pki.server.cert);
    assert.equal(await presentedSerial(fe.port, pki, 'http/1.1'), firstSerial);
    assert.equal(await presentedSerial(feGrpc.port, pki, 'h2'), firstSerial);

    // A live tunnel through each door.
    const connectClient = await DoorClient.open({
      port: fe.port,
      ca: pki.ca.cert,
      cert: pki.client.cert,
      key: pki.client.key,
    });
    await connectClient.write(connectRequest(echo.address));
    assert.equal((await connectClient.readHead()).status, 200);
    const grpcClient = new ProxyStreamClient(`127.0.0.1:${feGrpc.port}`, grpcCredentials(pki));
    const dial = await grpcClient.dial(echo.address);
    assert.equal(dial.error, '');

    // A half-written file is not applied: the old certificate stays.
    writeFileSync(live.cert, '-----BEGIN CERTIFICATE-----\ngarbage\n');
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(fe.tls!.check(), false);
    assert.equal(fe.tls!.reloads, 0);
    assert.equal(await presentedSerial(fe.port, pki, 'http/1.1'), firstSerial);

    // Rotation: a new certificate for the same names, renamed over the old files.
    const next = issueCert(join(fleet.dir, 'pki'), pki.ca, 'server-next', {
      usage: 'server',
      ips: ['127.0.0.1'],
    });
    replaceKeyPair(live, next);
    const nextSerial = serialOf(next.cert);
    assert.notEqual(nextSerial, firstSerial);
    await eventually(() => fe.tls!.reloads >= 1 && feGrpc.tls!.reloads >= 1, 'both doors reloaded', 15_000);
    assert.equal(
      await presentedSerial(fe.port, pki, 'http/1.1'),
      nextSerial,
      'new CONNECT handshakes see the new cert',
    );
    assert.equal(
      await presentedSerial(feGrpc.port, pki, 'h2'),
      nextSerial,
      'new gRPC handshakes see the new cert',
    );

    // The reloaded context still demands a client certificate and keeps the TLS policy.
    for (const [port, alpn] of [
      [fe.port, 'http/1.1'],
      [feGrpc.port, 'h2'],
    ] as const) {
      const anonymous = await tryHandshake(port, { ...clientFiles(pki, null), ALPNProtocols: [alpn] });
      assert.equal(anonymous.ok, false, `no client certificate after reload (${alpn})`);
      assert.match(anonymous.code ?? '', /CERTIFICATE_REQUIRED/);
    }

    // The tunnels opened before the reload still work.
    await connectClient.write('still here\n');
    assert.equal((await connectClient.readBytes(11)).toString(), 'still here\n');
    grpcClient.send(dial.connectID, Buffer.from('grpc still here'));
    await grpcClient.waitBytes(dial.connectID, 15);
    assert.equal(grpcClient.dataOf(dial.connectID).toString(), 'grpc still here');

    // And new clients get through with the new certificate.
    const { stdout } = await run('curl', [
      ...curlArgs(fe.port, pki.client),
      `http://127.0.0.1:${web.port}/after-reload`,
    ]);
    assert.equal(stdout, 'web /after-reload\n200 200');
    const fresh = new ProxyStreamClient(`127.0.0.1:${feGrpc.port}`, grpcCredentials(pki));
    assert.equal((await fresh.dial(echo.address)).error, '');
    fresh.close();
    connectClient.close();
    grpcClient.close();
  });
});
