/**
 * Flags -> typed, validated configuration, in one place. Components never
 * read process.env or argv themselves.
 */
import { hostname } from 'node:os';
import { nuid } from '@nats-io/transport-node';
import type { AgentConfig } from '../agent/agent.js';
import { createDestinationPolicy } from '../agent/policy.js';
import type { NatsSettings } from '../broker/bus/connection.js';
import { defaultPresenceSettings } from '../broker/bus/presence.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { LogSettings } from '../broker/logging.js';
import { frontendWorkerId, MAX_FRONTEND_WORKERS } from '../broker/nats-server/nats-auth.js';
import { tracingSettings } from '../broker/telemetry/tracing.js';
import { type CreditSettings, defaultCreditSettings } from '../broker/tunnel/credit.js';
import { defaultTunnelHostTiming, type TunnelHostTiming } from '../broker/tunnel/tunnel-host.js';
import { parseAgentIdentifiers } from '../broker/wire/identifiers.js';
import { assertToken, idToken } from '../broker/wire/subjects.js';
import type { FrontendConfig } from '../frontend/frontend.js';
import { type ProxyStrategy, parseStrategies } from '../frontend/router.js';
import { parseCipherSuites, parseTlsMinVersion } from '../frontend/tls.js';
import { FlagReader, type FlagSpec, parseFlags } from './flags.js';
import { klogFlags, logLevelFlag, logSettings } from './log-flags.js';
import {
  busPingIntervalMs,
  type UpstreamFlagWarning,
  upstreamAgentFlags,
  upstreamFlagWarnings,
  upstreamServerFlags,
} from './upstream-flags.js';

export const natsFlags: FlagSpec[] = [
  {
    name: 'nats-url',
    kind: 'string',
    help: 'NATS server URL(s), comma-separated',
    placeholder: 'URL[,URL...]',
  },
  {
    name: 'subject-prefix',
    kind: 'string',
    default: 'knats',
    help: 'subject prefix; one per cluster',
    placeholder: 'P',
  },
  {
    name: 'nats-creds',
    kind: 'string',
    help: 'NATS credentials file (JWT + nkey seed)',
    placeholder: 'FILE',
  },
  { name: 'nats-nkey', kind: 'string', help: 'file holding an nkey seed', placeholder: 'FILE' },
  { name: 'nats-user', kind: 'string', help: 'NATS user name', placeholder: 'USER' },
  {
    name: 'nats-password',
    kind: 'string',
    help: 'NATS password (visible in the process list: prefer --nats-password-file)',
    placeholder: 'PASSWORD',
  },
  {
    name: 'nats-password-file',
    kind: 'string',
    help: 'file holding the NATS password (one line)',
    placeholder: 'FILE',
  },
  {
    name: 'nats-token',
    kind: 'string',
    help: 'NATS token (visible in the process list: prefer --nats-token-file)',
    placeholder: 'TOKEN',
  },
  {
    name: 'nats-token-file',
    kind: 'string',
    help: 'file holding the NATS token (one line)',
    placeholder: 'FILE',
  },
  { name: 'nats-tls-ca', kind: 'string', help: 'CA bundle to verify the NATS servers', placeholder: 'FILE' },
  { name: 'nats-tls-cert', kind: 'string', help: 'client certificate for NATS (mTLS)', placeholder: 'FILE' },
  { name: 'nats-tls-key', kind: 'string', help: 'key of --nats-tls-cert', placeholder: 'FILE' },
  logLevelFlag,
];

const tunnelFlags: FlagSpec[] = [
  {
    name: 'tunnel-window',
    kind: 'int',
    default: defaultCreditSettings.window,
    help: 'bytes one tunnel direction may have in flight (credit window)',
    placeholder: 'BYTES',
  },
  {
    name: 'receive-budget',
    kind: 'int',
    default: defaultCreditSettings.budget,
    help: 'bytes in flight toward this process above each tunnel minimum; keep below the NATS max_pending',
    placeholder: 'BYTES',
  },
  {
    name: 'heartbeat-interval',
    kind: 'duration',
    default: `${defaultPresenceSettings.heartbeatMs}ms`,
    help: 'presence heartbeat interval; a peer silent for 3 intervals is gone',
    placeholder: 'DUR',
  },
  {
    name: 'stalled-tunnel-timeout',
    kind: 'duration',
    default: `${defaultTunnelHostTiming.stalledTimeoutMs / 60_000}m`,
    help: 'a tunnel whose bytes wait while none moves either way for this long is aborted on both ends (0: never); idle tunnels are never touched',
    placeholder: 'DUR',
  },
];

/** Health, admin, tracing and shutdown flags; the port flags' names and defaults are upstream's, per component. */
function processFlags(
  healthPort: string,
  healthDefault: number,
  adminPort: string,
  adminDefault: number,
): FlagSpec[] {
  return [
    {
      name: healthPort,
      kind: 'int',
      default: healthDefault,
      help: 'port of /healthz, /readyz, /metrics (0: pick one)',
      placeholder: 'N',
    },
    {
      name: 'health-bind-address',
      kind: 'string',
      default: '',
      help: 'bind address of the health port (default: all interfaces, as upstream)',
      placeholder: 'ADDR',
    },
    {
      name: adminPort,
      kind: 'int',
      default: adminDefault,
      help: 'port of /debug/state (served only here) and the health endpoints (0: pick one)',
      placeholder: 'N',
    },
    {
      name: 'admin-bind-address',
      kind: 'string',
      default: '127.0.0.1',
      help: 'bind address of the admin port',
      placeholder: 'ADDR',
    },
    {
      name: 'otlp-endpoint',
      kind: 'string',
      help: 'export one trace per tunnel over OTLP/HTTP to this collector (URL/v1/traces); default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; none: no tracing',
      placeholder: 'URL',
    },
    {
      name: 'graceful-shutdown-timeout',
      kind: 'duration',
      default: '15s',
      help: 'how long open tunnels may finish on SIGTERM',
      placeholder: 'DUR',
    },
  ];
}

export const frontendFlags: FlagSpec[] = [
  ...natsFlags,
  {
    name: 'mode',
    kind: 'string',
    default: 'grpc',
    help: 'front door protocol: grpc or http-connect',
    placeholder: 'MODE',
  },
  { name: 'uds-name', kind: 'string', help: 'Unix socket to listen on', placeholder: 'PATH' },
  {
    name: 'delete-existing-uds-file',
    kind: 'bool',
    default: true,
    help: 'remove a stale socket file at startup',
  },
  {
    name: 'uds-mode',
    kind: 'string',
    default: '0660',
    help: 'permissions of the Unix socket (octal)',
    placeholder: 'MODE',
  },
  {
    name: 'server-port',
    kind: 'int',
    default: 0,
    help: 'TCP port (mTLS); 0 with --uds-name: no TCP listener',
    placeholder: 'N',
  },
  {
    name: 'server-bind-address',
    kind: 'string',
    default: '127.0.0.1',
    help: 'TCP bind address',
    placeholder: 'ADDR',
  },
  { name: 'server-cert', kind: 'string', help: 'TLS certificate of the TCP listener', placeholder: 'FILE' },
  { name: 'server-key', kind: 'string', help: 'TLS key of the TCP listener', placeholder: 'FILE' },
  {
    name: 'server-ca-cert',
    kind: 'string',
    help: 'CA that client certificates must chain to',
    placeholder: 'FILE',
  },
  {
    name: 'tls-min-version',
    kind: 'string',
    default: 'VersionTLS12',
    help: 'lowest TLS version of the TCP listener: VersionTLS12 or VersionTLS13',
    placeholder: 'VERSION',
  },
  {
    name: 'cipher-suites',
    kind: 'string',
    repeatable: true,
    default: '',
    help: 'comma-separated TLS 1.2 cipher suites, Go/IANA names (TLS 1.3 suites are not configurable); empty: defaults',
    placeholder: 'LIST',
  },
  {
    name: 'proxy-strategies',
    kind: 'string',
    default: 'default',
    help: 'routing strategies in order: default, destHost, defaultRoute',
    placeholder: 'LIST',
  },
  {
    name: 'backend-dial-timeout',
    kind: 'duration',
    default: '5s',
    help: "how long an agent may take to dial; 0 (upstream's default, no timeout) leaves it to the kernel's connect timeout, at most 2m",
    placeholder: 'DUR',
  },
  {
    name: 'dial-accept-timeout',
    kind: 'duration',
    default: '1s',
    help: 'an agent that does not acknowledge a dial within this is taken for dead and the dial moves on',
    placeholder: 'DUR',
  },
  {
    name: 'dial-response-settle',
    kind: 'duration',
    default: '50ms',
    help:
      "gRPC door: a new connection's first DATA or CLOSE_RSP waits this long after its DIAL_RSP was written, " +
      'unless the client sends on it first (the Go konnectivity-client drops packets for a connection it ' +
      'has not registered yet); 0: only until the DIAL_RSP is written',
    placeholder: 'DUR',
  },
  {
    name: 'server-id',
    kind: 'string',
    help: 'frontend id on the bus (default: hostname + random)',
    placeholder: 'ID',
  },
  {
    name: 'workers',
    kind: 'int',
    default: 1,
    help: `frontend processes sharing the listeners (Node cluster), each its own bus connection and id <server-id>-w<k>; 1: one process (at most ${MAX_FRONTEND_WORKERS})`,
    placeholder: 'N',
  },
  ...processFlags('health-port', 8092, 'admin-port', 8095),
  {
    name: 'max-pending-dials',
    kind: 'int',
    default: 1024,
    help: 'dials in flight per frontend',
    placeholder: 'N',
  },
  {
    name: 'max-pending-dials-per-stream',
    kind: 'int',
    default: 64,
    help: 'dials in flight per gRPC stream',
    placeholder: 'N',
  },
  ...tunnelFlags,
  ...klogFlags,
  ...upstreamServerFlags,
];

export const agentFlags: FlagSpec[] = [
  ...natsFlags,
  {
    name: 'agent-id',
    kind: 'string',
    help: 'agent id on the bus (default: hostname + random)',
    placeholder: 'ID',
  },
  {
    name: 'agent-identifiers',
    kind: 'string',
    default: '',
    help: "identifiers for destHost routing: 'host=a&ipv4=b&ipv6=c&cidr=d&default-route=true'",
    placeholder: 'QUERY',
  },
  { name: 'dial-timeout', kind: 'duration', default: '5s', help: 'TCP dial timeout', placeholder: 'DUR' },
  {
    name: 'allow-destinations',
    kind: 'string',
    default: '',
    help:
      'only these destinations may be dialed (empty: all not denied). Comma-separated entries, each ' +
      "optionally with ports: CIDR or IP (10.0.0.0/8, fd00::/8), host name, '*.' wildcard name " +
      "(*.svc.cluster.local), '*'; ports as ENTRY:443,8443,9000-9100 (IPv6 with ports in brackets: " +
      '[fd00::]/8:443). Names are checked before DNS, every resolved address after it',
    placeholder: 'LIST',
  },
  {
    name: 'deny-destinations',
    kind: 'string',
    default: '',
    help:
      'destinations never dialed, same syntax; deny wins over allow. Denied by default unless allowed ' +
      'by an exact entry (a single IP or exact name) in --allow-destinations: loopback (0.0.0.0 and :: ' +
      'included), link-local, cloud metadata and credential endpoints (169.254.169.254, fd00:ec2::254, ' +
      '169.254.170.2, 169.254.170.23, 100.100.100.200, metadata.google.internal, ...; IPv4-mapped and ' +
      "NAT64 forms too), and this agent's own health and admin ports",
    placeholder: 'LIST',
  },
  ...processFlags('health-server-port', 8093, 'admin-server-port', 8094),
  ...tunnelFlags,
  ...klogFlags,
  ...upstreamAgentFlags,
];

function bad(message: string): KnatsError {
  return new KnatsError(ErrorCode.BadConfig, message);
}

export function natsSettings(flags: FlagReader): NatsSettings {
  const url = flags.string('nats-url');
  if (!url) throw bad('--nats-url: required (e.g. nats://127.0.0.1:4222)');
  const servers = url
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const server of servers) {
    if (!/^(nats|tls|ws|wss):\/\/[^\s]+$|^[^\s:/]+:[0-9]+$/.test(server)) {
      throw bad(`--nats-url: ${JSON.stringify(server)} is not a NATS URL (nats://host:port)`);
    }
  }
  for (const [a, b] of [
    ['nats-password', 'nats-password-file'],
    ['nats-token', 'nats-token-file'],
  ] as const) {
    if (flags.has(a) && flags.has(b)) throw bad(`--${a} and --${b}: give one of them`);
  }
  const hasPassword = flags.has('nats-password') || flags.has('nats-password-file');
  if (hasPassword !== flags.has('nats-user')) {
    throw bad('--nats-user and --nats-password (or --nats-password-file) go together');
  }
  if (flags.has('nats-tls-cert') !== flags.has('nats-tls-key')) {
    throw bad('--nats-tls-cert and --nats-tls-key go together');
  }
  const optional = (name: string) => flags.string(name);
  return {
    servers,
    user: optional('nats-user'),
    password: optional('nats-password'),
    passwordFile: optional('nats-password-file'),
    token: optional('nats-token'),
    tokenFile: optional('nats-token-file'),
    credsFile: optional('nats-creds'),
    nkeyFile: optional('nats-nkey'),
    tlsCaFile: optional('nats-tls-ca'),
    tlsCertFile: optional('nats-tls-cert'),
    tlsKeyFile: optional('nats-tls-key'),
  };
}

function creditSettings(flags: FlagReader): CreditSettings {
  const window = flags.int('tunnel-window');
  const budget = flags.int('receive-budget');
  if (window < defaultCreditSettings.minWindow) {
    throw bad(`--tunnel-window: at least ${defaultCreditSettings.minWindow} bytes`);
  }
  if (budget < 0) throw bad('--receive-budget: must not be negative');
  return { window, minWindow: defaultCreditSettings.minWindow, budget };
}

function tunnelHostTiming(flags: FlagReader): TunnelHostTiming {
  return { ...defaultTunnelHostTiming, stalledTimeoutMs: flags.duration('stalled-tunnel-timeout') };
}

function presenceSettings(flags: FlagReader) {
  const heartbeatMs = flags.duration('heartbeat-interval');
  if (heartbeatMs < 100) throw bad('--heartbeat-interval: at least 100ms');
  return { heartbeatMs, missedBeats: defaultPresenceSettings.missedBeats };
}

/** The flag, else upstream's environment variable (PROXY_SERVER_ID, PROXY_AGENT_ID), else hostname + random. */
function processId(flags: FlagReader, flag: string, upstreamEnv: string | undefined): string {
  const id =
    flags.string(flag) ??
    (upstreamEnv || undefined) ??
    `${hostname()
      .replace(/[^A-Za-z0-9_-]/g, '-')
      .slice(0, 40)}-${nuid.next().slice(-8)}`;
  try {
    return assertToken(idToken(id), `--${flag}`);
  } catch (err) {
    throw bad((err as Error).message);
  }
}

/** Linux gives up a TCP connect after about 127 s (6 SYN retries); upstream's "no dial timeout" ends there. */
const KERNEL_CONNECT_TIMEOUT_MS = 120_000;
/** grpc-go's server keepalive when its time is 0, as upstream's --frontend-keepalive-time=0 gets. */
const GRPC_DEFAULT_KEEPALIVE_MS = 2 * 60 * 60 * 1000;

/** A duration where upstream takes 0 for "its default": 0 becomes `zeroMeans`. */
function durationOrDefault(flags: FlagReader, name: string, zeroMeans: number): number {
  const ms = flags.duration(name);
  if (ms < 0) throw bad(`--${name}: must not be negative`);
  return ms === 0 ? zeroMeans : ms;
}

function positiveDuration(flags: FlagReader, name: string): number {
  const ms = flags.duration(name);
  if (ms <= 0) throw bad(`--${name}: must be positive`);
  return ms;
}

export type WithoutLogger<T> = Omit<T, 'logger'>;

/** What a long-running command needs besides its component's config. */
export interface ComponentStart<T> {
  readonly config: WithoutLogger<T>;
  readonly logging: LogSettings;
  /** Upstream flags given that have no effect here, to log once the logger exists. */
  readonly warnings: readonly UpstreamFlagWarning[];
}

/** The bus settings of a long-running component: --keepalive-time sets the ping interval. */
function componentNats(flags: FlagReader): NatsSettings {
  return { ...natsSettings(flags), pingIntervalMs: busPingIntervalMs(flags) };
}

/** The frontend's start: with `workers` > 1, a cluster primary and that many workers (frontend/workers.ts). */
export interface FrontendStart extends ComponentStart<FrontendConfig> {
  readonly workers: number;
}

export function frontendConfig(argv: readonly string[], env: NodeJS.ProcessEnv): FrontendStart {
  const flags = new FlagReader(frontendFlags, parseFlags(frontendFlags, argv, env));
  if (flags.positionals.length) throw bad(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
  const mode = flags.string('mode');
  if (mode !== 'grpc' && mode !== 'http-connect')
    throw bad(`--mode: must be grpc or http-connect, got ${JSON.stringify(mode)}`);
  const udsName = flags.string('uds-name');
  const serverPort = flags.port('server-port');
  if (!udsName && serverPort === 0) throw bad('--uds-name or --server-port: one front door is required');
  const missingTls = ['server-cert', 'server-key', 'server-ca-cert'].filter((name) => !flags.has(name));
  if (serverPort > 0 && missingTls.length > 0) {
    throw bad(
      `${missingTls.map((name) => `--${name}`).join(', ')}: required with --server-port ${serverPort} (a TCP frontend requires mTLS)`,
    );
  }
  const udsModeText = flags.string('uds-mode') ?? '0660';
  if (!/^0?[0-7]{3}$/.test(udsModeText))
    throw bad(`--uds-mode: expected octal such as 0660, got ${udsModeText}`);
  let proxyStrategies: ProxyStrategy[];
  try {
    proxyStrategies = parseStrategies(flags.string('proxy-strategies') ?? 'default');
  } catch (err) {
    throw bad((err as Error).message);
  }
  const maxPendingDials = flags.int('max-pending-dials');
  const maxPendingDialsPerStream = flags.int('max-pending-dials-per-stream');
  if (maxPendingDials < 1) throw bad('--max-pending-dials: at least 1');
  if (maxPendingDialsPerStream < 1) throw bad('--max-pending-dials-per-stream: at least 1');
  const workers = flags.int('workers');
  if (workers < 1 || workers > MAX_FRONTEND_WORKERS)
    throw bad(`--workers: between 1 and ${MAX_FRONTEND_WORKERS}`);
  const id = processId(flags, 'server-id', env.PROXY_SERVER_ID);
  if (workers > 1) {
    try {
      assertToken(frontendWorkerId(id, workers), '--server-id with --workers: worker id');
    } catch (err) {
      throw bad((err as Error).message);
    }
  }
  return {
    workers,
    logging: logSettings(flags, 'frontend'),
    warnings: upstreamFlagWarnings(frontendFlags, flags),
    config: {
      id,
      nats: componentNats(flags),
      subjectPrefix: subjectPrefix(flags),
      mode,
      udsName,
      deleteExistingUdsFile: flags.bool('delete-existing-uds-file'),
      udsMode: Number.parseInt(udsModeText, 8),
      serverPort,
      serverBindAddress: flags.string('server-bind-address') ?? '127.0.0.1',
      serverCert: flags.string('server-cert'),
      serverKey: flags.string('server-key'),
      serverCaCert: flags.string('server-ca-cert'),
      tlsMinVersion: flagValue('tls-min-version', () =>
        parseTlsMinVersion(flags.string('tls-min-version') ?? ''),
      ),
      cipherSuites: flagValue('cipher-suites', () => parseCipherSuites(flags.string('cipher-suites') ?? '')),
      proxyStrategies,
      backendDialTimeoutMs: durationOrDefault(flags, 'backend-dial-timeout', KERNEL_CONNECT_TIMEOUT_MS),
      dialAcceptTimeoutMs: positiveDuration(flags, 'dial-accept-timeout'),
      dialResponseSettleMs: flags.duration('dial-response-settle'),
      healthPort: flags.port('health-port'),
      healthBindAddress: flags.string('health-bind-address') ?? '',
      adminPort: flags.port('admin-port'),
      adminBindAddress: flags.string('admin-bind-address') ?? '127.0.0.1',
      enableProfiling: flags.bool('enable-profiling'),
      grpcKeepaliveMs: durationOrDefault(flags, 'frontend-keepalive-time', GRPC_DEFAULT_KEEPALIVE_MS),
      gracefulShutdownTimeoutMs: flags.duration('graceful-shutdown-timeout'),
      maxPendingDials,
      maxPendingDialsPerStream,
      credit: creditSettings(flags),
      timing: tunnelHostTiming(flags),
      presence: presenceSettings(flags),
      tracing: tracingSettings(flags.string('otlp-endpoint'), env),
    },
  };
}

/** Runs a value parser whose errors become one-line flag errors. */
function flagValue<T>(flag: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw bad(`--${flag}: ${(err as Error).message}`);
  }
}

function subjectPrefix(flags: FlagReader): string {
  try {
    return assertToken(flags.string('subject-prefix') ?? 'knats', '--subject-prefix');
  } catch (err) {
    throw bad((err as Error).message);
  }
}

export function agentConfig(argv: readonly string[], env: NodeJS.ProcessEnv): ComponentStart<AgentConfig> {
  const flags = new FlagReader(agentFlags, parseFlags(agentFlags, argv, env));
  if (flags.positionals.length) throw bad(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
  if (flags.has('health-bind-address') && flags.has('health-server-host')) {
    throw bad('--health-bind-address and --health-server-host (its upstream name): give one of them');
  }
  return {
    logging: logSettings(flags, 'agent'),
    warnings: upstreamFlagWarnings(agentFlags, flags),
    config: {
      id: processId(flags, 'agent-id', env.PROXY_AGENT_ID),
      nats: componentNats(flags),
      subjectPrefix: subjectPrefix(flags),
      identifiers: parseAgentIdentifiers(flags.string('agent-identifiers') ?? ''),
      dialTimeoutMs: positiveDuration(flags, 'dial-timeout'),
      destinationPolicy: createDestinationPolicy({
        allow: flags.string('allow-destinations') ?? '',
        deny: flags.string('deny-destinations') ?? '',
      }),
      healthPort: flags.port('health-server-port'),
      healthBindAddress: flags.string('health-bind-address') ?? flags.string('health-server-host') ?? '',
      adminPort: flags.port('admin-server-port'),
      adminBindAddress: flags.string('admin-bind-address') ?? '127.0.0.1',
      enableProfiling: flags.bool('enable-profiling'),
      gracefulShutdownTimeoutMs: flags.duration('graceful-shutdown-timeout'),
      credit: creditSettings(flags),
      timing: tunnelHostTiming(flags),
      presence: presenceSettings(flags),
      tracing: tracingSettings(flags.string('otlp-endpoint'), env),
    },
  };
}
