/**
 * The rest of upstream's command line (apiserver-network-proxy v0.36
 * proxy-server and proxy-agent): flags mapped onto what the bus has, and
 * flags that have no meaning on a bus, accepted with one start-up warning
 * each naming what replaces them. Upstream's manifests then start unchanged
 * but for the image and --nats-url. Flags that mean the same here keep their
 * names in config.ts; klog's logging flags are in log-flags.ts.
 */
import { DEFAULT_PING_INTERVAL_MS } from '../broker/bus/connection.js';
import { ErrorCode } from '../broker/errors.js';
import type { FlagReader, FlagSpec } from './flags.js';

const CREDENTIALS =
  '--nats-creds, --nats-nkey or --nats-user/--nats-password-file (the NATS server authenticates each process)';
const PRESENCE = 'presence heartbeats on the bus (the fleet is known without leases or a server count)';
const CREDIT = '--tunnel-window and --receive-budget (credit per tunnel)';
const NO_KUBERNETES_CLIENT = 'nothing: knats never calls the Kubernetes API';

/** Upstream's, with the same meaning or mapped; both roles. */
const mappedFlags: FlagSpec[] = [
  {
    name: 'keepalive-time',
    kind: 'duration',
    default: '1h',
    help: `upstream's transport keepalive, here the NATS connection's: it is pinged at least this often, and every ${DEFAULT_PING_INTERVAL_MS / 1000}s at most (1s at least)`,
    placeholder: 'DUR',
  },
  {
    name: 'enable-profiling',
    kind: 'bool',
    default: false,
    help: 'serve /debug/pprof/profile?seconds=N (CPU profile, .cpuprofile) and /debug/pprof/heap (heap snapshot) on the admin port',
  },
  {
    name: 'enable-contention-profiling',
    kind: 'bool',
    replacedBy: '--enable-profiling (Node.js has no lock contention to profile)',
    help: '',
  },
  { name: 'kubeconfig', kind: 'string', replacedBy: NO_KUBERNETES_CLIENT, help: '' },
  { name: 'kube-api-content-type', kind: 'string', replacedBy: NO_KUBERNETES_CLIENT, help: '' },
  { name: 'lease-namespace', kind: 'string', replacedBy: PRESENCE, help: '' },
  { name: 'lease-label', kind: 'string', replacedBy: PRESENCE, help: '' },
  { name: 'xfr-channel-size', kind: 'int', replacedBy: CREDIT, help: '' },
  { name: 'warn-on-channel-limit', kind: 'bool', replacedBy: CREDIT, help: '' },
];

export const upstreamServerFlags: FlagSpec[] = [
  ...mappedFlags,
  {
    name: 'frontend-keepalive-time',
    kind: 'duration',
    default: '30s',
    help: "gRPC keepalive ping interval toward kube-apiserver (upstream default 1h; 0 is grpc-go's default, 2h)",
    placeholder: 'DUR',
  },
  {
    name: 'cluster-cert',
    kind: 'string',
    replacedBy:
      "the NATS server's TLS certificate (agents dial NATS, not the frontend); --nats-tls-cert for this process",
    help: '',
  },
  {
    name: 'cluster-key',
    kind: 'string',
    replacedBy: "the NATS server's TLS key; --nats-tls-key for this process",
    help: '',
  },
  {
    name: 'cluster-ca-cert',
    kind: 'string',
    replacedBy: "the NATS server's client CA and per-agent credentials; --nats-tls-ca for this process",
    help: '',
  },
  {
    name: 'agent-port',
    kind: 'int',
    replacedBy: "the NATS server's client port (agents dial NATS)",
    help: '',
  },
  { name: 'agent-bind-address', kind: 'string', replacedBy: "the NATS server's listen address", help: '' },
  { name: 'server-count', kind: 'int', replacedBy: PRESENCE, help: '' },
  { name: 'enable-lease-controller', kind: 'bool', replacedBy: PRESENCE, help: '' },
  { name: 'agent-namespace', kind: 'string', replacedBy: CREDENTIALS, help: '' },
  { name: 'agent-service-account', kind: 'string', replacedBy: CREDENTIALS, help: '' },
  { name: 'authentication-audience', kind: 'string', replacedBy: CREDENTIALS, help: '' },
  { name: 'kubeconfig-qps', kind: 'string', replacedBy: NO_KUBERNETES_CLIENT, help: '' },
  { name: 'kubeconfig-burst', kind: 'int', replacedBy: NO_KUBERNETES_CLIENT, help: '' },
];

export const upstreamAgentFlags: FlagSpec[] = [
  ...mappedFlags,
  {
    name: 'health-server-host',
    kind: 'string',
    help: "upstream's name of --health-bind-address",
    placeholder: 'ADDR',
  },
  { name: 'proxy-server-host', kind: 'string', replacedBy: '--nats-url', help: '' },
  { name: 'proxy-server-port', kind: 'int', replacedBy: '--nats-url', help: '' },
  {
    name: 'alpn-proto',
    kind: 'string',
    repeatable: true,
    replacedBy: '--nats-url (NATS speaks its own protocol)',
    help: '',
  },
  { name: 'agent-cert', kind: 'string', replacedBy: '--nats-tls-cert', help: '' },
  { name: 'agent-key', kind: 'string', replacedBy: '--nats-tls-key', help: '' },
  { name: 'ca-cert', kind: 'string', replacedBy: '--nats-tls-ca', help: '' },
  { name: 'service-account-token-path', kind: 'string', replacedBy: CREDENTIALS, help: '' },
  {
    name: 'sync-interval',
    kind: 'duration',
    replacedBy: 'the NATS client reconnecting by itself (one connection reaches every frontend)',
    help: '',
  },
  {
    name: 'sync-interval-cap',
    kind: 'duration',
    replacedBy: 'the NATS client reconnecting by itself',
    help: '',
  },
  { name: 'sync-forever', kind: 'bool', replacedBy: PRESENCE, help: '' },
  {
    name: 'probe-interval',
    kind: 'duration',
    replacedBy: '--keepalive-time (NATS pings) and /readyz',
    help: '',
  },
  { name: 'count-server-leases', kind: 'bool', replacedBy: PRESENCE, help: '' },
  { name: 'server-count-source', kind: 'string', replacedBy: PRESENCE, help: '' },
];

/** One start-up warning per upstream flag given that has no effect here. */
export interface UpstreamFlagWarning {
  readonly code: typeof ErrorCode.UpstreamFlagReplaced;
  readonly flag: string;
  readonly replacedBy: string;
}

export function upstreamFlagWarnings(specs: readonly FlagSpec[], flags: FlagReader): UpstreamFlagWarning[] {
  return specs.flatMap((spec) =>
    spec.replacedBy !== undefined && flags.has(spec.name)
      ? [{ code: ErrorCode.UpstreamFlagReplaced, flag: `--${spec.name}`, replacedBy: spec.replacedBy }]
      : [],
  );
}

/** --keepalive-time as the NATS ping interval: never rarer than our default, never more often than 1s. */
export function busPingIntervalMs(flags: FlagReader): number {
  const keepaliveMs = flags.duration('keepalive-time');
  if (keepaliveMs <= 0) return DEFAULT_PING_INTERVAL_MS;
  return Math.max(1000, Math.min(DEFAULT_PING_INTERVAL_MS, keepaliveMs));
}
