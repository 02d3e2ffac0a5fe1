/**
 * `knats dial`: a test client. Opens one tunnel through a frontend and pipes
 * stdin/stdout through it, like `nc`.
 */
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { credentials } from '@grpc/grpc-js';
import { parseDialAddress } from '../broker/address.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { openConnectTunnel } from '../client/connect-tunnel.js';
import { openGrpcTunnel } from '../client/grpc-tunnel.js';
import { FlagReader, type FlagSpec, parseFlags } from './flags.js';

export const dialFlags: FlagSpec[] = [
  {
    name: 'mode',
    kind: 'string',
    default: 'grpc',
    help: "the frontend's protocol: grpc or http-connect",
    placeholder: 'MODE',
  },
  { name: 'uds-name', kind: 'string', help: "the frontend's Unix socket", placeholder: 'PATH' },
  {
    name: 'server-address',
    kind: 'string',
    help: "the frontend's TCP host:port (mTLS)",
    placeholder: 'HOST:PORT',
  },
  { name: 'ca-cert', kind: 'string', help: 'CA of the frontend certificate (TCP)', placeholder: 'FILE' },
  { name: 'client-cert', kind: 'string', help: 'client certificate (TCP)', placeholder: 'FILE' },
  { name: 'client-key', kind: 'string', help: 'client key (TCP)', placeholder: 'FILE' },
  {
    name: 'timeout',
    kind: 'duration',
    default: '10s',
    help: 'how long to wait for the dial',
    placeholder: 'DUR',
  },
];

export async function runDial(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const flags = new FlagReader(dialFlags, parseFlags(dialFlags, argv, env));
  const [address, ...rest] = flags.positionals;
  if (!address || rest.length > 0) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      'usage: knats dial [--mode grpc|http-connect] (--uds-name PATH | --server-address HOST:PORT) HOST:PORT',
    );
  }
  const uds = flags.string('uds-name');
  const tcp = flags.string('server-address');
  if (!uds === !tcp)
    throw new KnatsError(ErrorCode.BadConfig, '--uds-name or --server-address: exactly one is required');
  const mode = flags.string('mode');
  if (mode !== 'grpc' && mode !== 'http-connect') {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--mode: must be grpc or http-connect, got ${JSON.stringify(mode)}`,
    );
  }
  const tls = tcp ? tlsFiles(flags) : undefined;
  // `knats dial ... | head`: a reader that leaves early ends the dial quietly, like any Unix filter.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw new KnatsError(ErrorCode.DialFailed, `stdout: ${err.message}`);
  });
  const timeoutMs = flags.duration('timeout');
  let tunnel: Duplex;
  if (mode === 'http-connect') {
    const target = uds ? { path: uds } : { ...tls!, ...serverAddress(tcp!) };
    tunnel = await openConnectTunnel(target, address, timeoutMs);
  } else {
    tunnel = await openGrpcTunnel({
      target: uds ? `unix:${uds}` : tcp!,
      address,
      credentials: tls
        ? credentials.createSsl(readFileSync(tls.ca), readFileSync(tls.key), readFileSync(tls.cert))
        : credentials.createInsecure(),
      timeoutMs,
    });
  }
  // Konnectivity tunnels have no half-close: stdin ending must not end the tunnel before the answer.
  process.stdin.pipe(tunnel, { end: false });
  tunnel.pipe(process.stdout);
  await new Promise<void>((resolve, reject) => {
    tunnel.on('end', resolve);
    tunnel.on('error', reject);
  });
  process.stdin.unpipe(tunnel);
  process.stdin.destroy();
  tunnel.destroy();
}

function tlsFiles(flags: FlagReader): { ca: string; cert: string; key: string } {
  const ca = flags.file('ca-cert');
  const cert = flags.file('client-cert');
  const key = flags.file('client-key');
  if (!ca || !cert || !key) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      '--ca-cert, --client-cert and --client-key: required with --server-address',
    );
  }
  return { ca, cert, key };
}

/** --server-address goes through the same host:port parser as every dial address. */
function serverAddress(value: string): { host: string; port: number } {
  try {
    return parseDialAddress(value);
  } catch (err) {
    throw new KnatsError(ErrorCode.BadConfig, `--server-address: ${(err as Error).message}`);
  }
}
