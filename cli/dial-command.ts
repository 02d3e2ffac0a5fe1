/**
 * `knats dial`: a test client. Opens one tunnel through a frontend and pipes
 * stdin/stdout through it, like `nc`.
 */
import { readFileSync } from 'node:fs';
import { credentials } from '@grpc/grpc-js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { openGrpcTunnel } from '../client/grpc-tunnel.js';
import { FlagReader, type FlagSpec, parseFlags } from './flags.js';

export const dialFlags: FlagSpec[] = [
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
      'usage: knats dial (--uds-name PATH | --server-address HOST:PORT) HOST:PORT',
    );
  }
  const uds = flags.string('uds-name');
  const tcp = flags.string('server-address');
  if (!uds === !tcp)
    throw new KnatsError(ErrorCode.BadConfig, '--uds-name or --server-address: exactly one is required');
  let target: string;
  let channelCredentials = credentials.createInsecure();
  if (uds) target = `unix:${uds}`;
  else {
    target = tcp!;
    const ca = flags.string('ca-cert');
    const cert = flags.string('client-cert');
    const key = flags.string('client-key');
    if (!ca || !cert || !key) {
      throw new KnatsError(
        ErrorCode.BadConfig,
        '--ca-cert, --client-cert and --client-key: required with --server-address',
      );
    }
    channelCredentials = credentials.createSsl(readFileSync(ca), readFileSync(key), readFileSync(cert));
  }
  const tunnel = await openGrpcTunnel({
    target,
    address,
    credentials: channelCredentials,
    timeoutMs: flags.duration('timeout'),
  });
  process.stdin.pipe(tunnel);
  tunnel.pipe(process.stdout);
  await new Promise<void>((resolve, reject) => {
    tunnel.on('end', resolve);
    tunnel.on('error', reject);
  });
  process.stdin.unpipe(tunnel);
  process.stdin.destroy();
  tunnel.destroy();
}
