/**
 * nats-server configuration files (deploy/nats/, deploy/kubernetes/control-plane/)
 */
import type { Problems } from './deploy-repo.js';

/** The files a nats-server configuration includes, relative to it. */
export function natsIncludes(conf: string): string[] {
  return [...conf.matchAll(/^\s*include\s+["']?([^"'\s]+)["']?/gm)].map((m) => m[1]!);
}

export interface NatsConf {
  /** The client port (`port:` or the top-level `listen:`). */
  readonly port: number;
  /** The top-level tls block: TLS for clients. */
  readonly clientTls: string | undefined;
  /** Its ca_file: the CA clients verify the servers with. */
  readonly clientCa: string | undefined;
  readonly cluster: string;
  readonly clusterPort: string | undefined;
  /** Every cert_file, key_file and ca_file. */
  readonly files: { key: string; path: string }[];
}

/** What the checks look at in a nats-server configuration (top-level keys start a line). */
export function readNatsConf(conf: string): NatsConf {
  const clientTls = /^tls\s*\{[\s\S]*?^\}/m.exec(conf)?.[0];
  const cluster = /^cluster\s*\{[\s\S]*?^\}/m.exec(conf)?.[0] ?? '';
  return {
    port: Number(/^(?:port:\s*|listen:\s*[^\s:]*:)(\d+)/m.exec(conf)?.[1] ?? 4222),
    clientTls,
    clientCa: /^\s*ca_file:\s*["']?([^"'\s]+)/m.exec(clientTls ?? '')?.[1],
    cluster,
    clusterPort: /listen:\s*[^\s:]*:(\d+)/.exec(cluster)?.[1],
    files: [...conf.matchAll(/^\s*(cert_file|key_file|ca_file):\s*["']?([^"'\s]+)/gm)].map((m) => ({
      key: m[1]!,
      path: m[2]!,
    })),
  };
}

export function checkNatsTls(at: string, conf: NatsConf, problems: Problems): void {
  if (!conf.clientTls) problems.add(at, 'no tls block: clients would talk to NATS in plaintext');
  if (!/^\s+tls\s*\{/m.test(conf.cluster)) problems.add(at, 'no tls block in cluster: routes in plaintext');
}

export function parseAuthUsers(conf: string): Map<string, string> {
  const users = new Map<string, string>();
  for (const m of conf.matchAll(/user:\s*"?([\w.-]+)"?\s*[\n,]\s*password:\s*"?([^\s",}]+)"?/g))
    users.set(m[1]!, m[2]!);
  return users;
}
