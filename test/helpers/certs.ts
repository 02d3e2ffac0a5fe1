/**
 * Certificates generated at run time with the `openssl` CLI (Debian's; the
 * bootstrap installs it): a CA, server certificates for 127.0.0.1 (SAN IP)
 * and client certificates, so mTLS tests use real PEM files on disk.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface KeyPair {
  readonly cert: string;
  readonly key: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

let serial = 0;

/** A self-signed CA (EC P-256) in `dir`/`name`.pem and `name`-key.pem. */
export function createCa(dir: string, name: string): KeyPair {
  mkdirSync(dir, { recursive: true });
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}-key.pem`);
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return { cert, key };
}

export interface IssueOptions {
  readonly usage: 'server' | 'client';
  readonly ips?: readonly string[];
  readonly dns?: readonly string[];
}

/** A certificate signed by `ca`, with its own EC key, written to `dir`/`name`.pem and `name`-key.pem. */
export function issueCert(dir: string, ca: KeyPair, name: string, options: IssueOptions): KeyPair {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}-key.pem`);
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  const san = [...(options.ips ?? []).map((ip) => `IP:${ip}`), ...(options.dns ?? []).map((d) => `DNS:${d}`)];
  writeFileSync(
    ext,
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      `extendedKeyUsage=${options.usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(san.length ? [`subjectAltName=${san.join(',')}`] : []),
    ].join('\n'),
  );
  openssl(
    [
      'req',
      '-new',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      csr,
      '-subj',
      `/CN=${name}`,
    ],
    dir,
  );
  serial++;
  openssl(
    [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      '-set_serial',
      String(Date.now() * 1000 + serial),
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      cert,
    ],
    dir,
  );
  return { cert, key };
}

export interface Pki {
  readonly dir: string;
  readonly ca: KeyPair;
  /** Server certificate for 127.0.0.1 / localhost, signed by `ca`. */
  readonly server: KeyPair;
  /** Client certificate signed by `ca`. */
  readonly client: KeyPair;
  /** A CA the frontend does not trust, and a client certificate it signed. */
  readonly otherCa: KeyPair;
  readonly otherClient: KeyPair;
}

export function createPki(dir: string): Pki {
  const ca = createCa(dir, 'ca');
  const otherCa = createCa(dir, 'other-ca');
  return {
    dir,
    ca,
    server: issueCert(dir, ca, 'server', { usage: 'server', ips: ['127.0.0.1'], dns: ['localhost'] }),
    client: issueCert(dir, ca, 'client', { usage: 'client' }),
    otherCa,
    otherClient: issueCert(dir, otherCa, 'other-client', { usage: 'client' }),
  };
}

/**
 * Replaces `target`'s certificate and key files with `source`'s the way
 * rotation tools do: write aside, then rename over (atomic per file).
 */
export function replaceKeyPair(target: KeyPair, source: KeyPair): void {
  for (const [from, to] of [
    [source.cert, target.cert],
    [source.key, target.key],
  ] as const) {
    const tmp = `${to}.tmp`;
    writeFileSync(tmp, readFileSync(from));
    renameSync(tmp, to);
  }
}

export function serialOf(certFile: string): string {
  return new X509Certificate(readFileSync(certFile)).serialNumber;
}
