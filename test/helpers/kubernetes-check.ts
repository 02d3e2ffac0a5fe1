/**
 * deploy/kubernetes/ checked against the real code: every manifest against
 * the OpenAPI schema of its kind, every knats container's command line
 * through the CLI's own validation, its probes, mounts, NATS users and the
 * EgressSelectorConfigurations that must match their sidecar.
 */
import { posix } from 'node:path';
import { parseAllDocuments } from 'yaml';
import {
  arr,
  claim,
  KUBERNETES_DIR,
  type Obj,
  obj,
  Problems,
  type Repo,
  text,
  underDir,
} from './deploy-repo.js';
import { kubernetesSchemaErrors } from './deploy-schemas.js';
import { parseDockerfile } from './dockerfile.js';
import {
  type Checked,
  checkInvocation,
  type FrontendSettings,
  filesOf,
  isAnyAddress,
  isLoopback,
  natsOf,
  natsUrl,
} from './knats-invocation.js';
import { checkNatsTls, type NatsConf, natsIncludes, readNatsConf } from './nats-conf.js';
import { programOf } from './shell-reader.js';

interface Container {
  readonly name: string;
  readonly raw: Obj;
  readonly argv: string[];
  readonly env: Record<string, string>;
  readonly mounts: { name: string; path: string; readOnly: boolean }[];
  checked?: Checked;
}

interface PodSpec {
  /** The manifest it is in. */
  readonly file: string;
  readonly where: string;
  /** The object the pod comes from: a Pod, or the Deployment (StatefulSet, ...) with its template. */
  readonly workload: Obj;
  readonly raw: Obj;
  readonly containers: Container[];
  readonly volumes: Map<string, Obj>;
}

function podSpecOf(doc: Obj): Obj | undefined {
  const spec = obj(doc.spec);
  switch (doc.kind) {
    case 'Pod':
      return spec;
    case 'Deployment':
    case 'StatefulSet':
    case 'DaemonSet':
    case 'ReplicaSet':
    case 'Job':
      return obj(obj(spec.template).spec);
    case 'CronJob':
      return obj(obj(obj(obj(spec.jobTemplate).spec).template).spec);
    default:
      return undefined;
  }
}

/** The control-plane NATS: a nats-server container and its configuration's template in the repository. */
interface KubernetesNats {
  readonly pod: PodSpec;
  readonly container: Container;
  /** deploy/kubernetes/...: the template of the file --config names on the host. */
  readonly template: string;
  /** --config, as the container sees it. */
  readonly configPath: string;
  readonly conf: NatsConf;
}

export interface KubernetesReport {
  readonly pods: PodSpec[];
  readonly egress: { where: string; selection: Obj }[];
  readonly nats: KubernetesNats[];
}

/** An address only the cluster itself can reach (or none outside the pod): not a name agents dial out to. */
const isClusterInternal = (host: string) =>
  isLoopback(host) ||
  /^[\d.]+$/.test(host) ||
  host.includes(':') ||
  !host.includes('.') ||
  /\.(svc|cluster\.local)$|\.svc\./.test(host);

export function checkKubernetes(repo: Repo): KubernetesReport {
  const problems = new Problems();
  const image = parseDockerfile(repo.read('Dockerfile') ?? '');
  const pods: PodSpec[] = [];
  const egress: { where: string; selection: Obj }[] = [];

  for (const file of repo.list(KUBERNETES_DIR, /\.ya?ml$/)) {
    const docs = parseAllDocuments(repo.read(file) ?? '');
    for (const [index, document] of (Array.isArray(docs) ? docs : [docs]).entries()) {
      for (const e of document.errors) problems.add(file, `YAML: ${e.message}`);
      const doc = obj(document.toJS());
      const where = `${file}#${index + 1} ${text(doc.kind) ?? ''}/${text(obj(doc.metadata).name) ?? ''}`;
      for (const error of kubernetesSchemaErrors(doc)) problems.add(where, `Kubernetes schema: ${error}`);
      // A Service's address is the cluster's to choose: a pinned one only works where the
      // control plane sits on the Service network.
      const clusterIP = doc.kind === 'Service' ? text(obj(doc.spec).clusterIP) : undefined;
      if (clusterIP && clusterIP !== 'None')
        problems.add(where, `pins clusterIP ${clusterIP}: reachable only from the Service network`);
      if (doc.kind === 'EgressSelectorConfiguration') {
        for (const selection of arr(doc.egressSelections))
          if (obj(selection).name === 'cluster') egress.push({ where, selection: obj(selection) });
        continue;
      }
      const spec = podSpecOf(doc);
      if (!spec) continue;
      const volumes = new Map(arr(spec.volumes).map((v) => [text(obj(v).name) ?? '', obj(v)]));
      const containers: Container[] = [];
      for (const raw of [...arr(spec.initContainers), ...arr(spec.containers)].map(obj)) {
        const env: Record<string, string> = {};
        for (const e of arr(raw.env).map(obj)) {
          const name = text(e.name) ?? '';
          // From the cluster (Secrets, the pod's name): a placeholder that is a valid value and id.
          env[name] = text(e.value) ?? `from-${name.toLowerCase().replace(/_/g, '-')}`;
        }
        // Kubernetes expands $(VAR) in command and args from the container's env.
        const expand = (v: unknown) =>
          (text(v) ?? '').replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, n: string) => env[n] ?? m);
        const command = raw.command ? arr(raw.command).map(expand) : undefined;
        const args = raw.args ? arr(raw.args).map(expand) : undefined;
        const ours = /konnectivity-nats/.test(text(raw.image) ?? '');
        const argv =
          ours && !command
            ? [...image.entrypoint, ...(args ?? image.cmd)]
            : [...(command ?? []), ...(args ?? [])];
        const mounts = arr(raw.volumeMounts).map((m) => ({
          name: text(obj(m).name) ?? '',
          path: text(obj(m).mountPath) ?? '',
          readOnly: obj(m).readOnly === true,
        }));
        const container: Container = { name: text(raw.name) ?? '', raw, argv, env, mounts };
        const at = `${where} container ${container.name}`;
        for (const m of mounts)
          if (!volumes.has(m.name))
            problems.add(at, `mounts volume ${m.name}, which the pod does not declare`);
        if (ours) {
          const { program, args: knatsArgs } = programOf(argv);
          if (program !== 'knats') problems.add(at, `runs ${argv.join(' ')}, not knats`);
          else {
            const checked = checkInvocation({ where: at, argv: knatsArgs, env }, problems);
            if (checked) container.checked = checked;
          }
        }
        containers.push(container);
      }
      pods.push({ file, where, workload: doc, raw: spec, containers, volumes });
    }
  }

  const mountOf = (c: Container, path: string) => {
    let best: { name: string; path: string; readOnly: boolean; rest: string } | undefined;
    for (const m of c.mounts) {
      const rest = underDir(path, m.path);
      if (rest !== undefined && (!best || m.path.length > best.path.length)) best = { ...m, rest };
    }
    return best;
  };
  /** The host path behind a container path (hostPath volumes), or the volume and sub path. */
  const backing = (pod: PodSpec, c: Container, path: string) => {
    const m = mountOf(c, path);
    if (!m) return undefined;
    const hostPath = text(obj(pod.volumes.get(m.name)?.hostPath).path);
    return hostPath ? `host:${posix.join(hostPath, m.rest)}` : `volume:${m.name}/${m.rest}`;
  };

  // The control-plane NATS: official image at a release, on the host network (the sidecar
  // reaches it on loopback, agents on the nodes' client port), its --config a host file
  // whose template sits next to the manifest.
  const nats: KubernetesNats[] = [];
  for (const pod of pods) {
    for (const c of pod.containers) {
      const natsImage = text(c.raw.image) ?? '';
      if (!/^nats(:|@|$)/.test(natsImage)) continue;
      const at = `${pod.where} container ${c.name}`;
      if (!/^nats:\d+\.\d+\.\d+(-[a-z0-9]+)?$/.test(natsImage))
        problems.add(at, `image ${natsImage} is not pinned to a NATS release (nats:X.Y.Z)`);
      if (pod.raw.hostNetwork !== true)
        problems.add(
          at,
          "not on the host network: the sidecar reaches it on loopback, agents on the nodes' port",
        );
      const args = /(^|\/)nats-server$/.test(c.argv[0] ?? '') ? c.argv.slice(1) : c.argv;
      const i = args.findIndex((a) => a === '--config' || a === '-c');
      const configPath = i >= 0 ? args[i + 1] : undefined;
      if (!configPath) {
        problems.add(at, 'nats-server without --config');
        continue;
      }
      if (!mountOf(c, configPath)) problems.add(at, `--config ${configPath} is not in a mounted volume`);
      const template = posix.join(posix.dirname(pod.file), posix.basename(configPath));
      const source = repo.read(template);
      if (source === undefined) {
        problems.add(at, `--config ${configPath}: its template ${template} is not in the repository`);
        continue;
      }
      const conf = readNatsConf(source);
      checkNatsTls(template, conf, problems);
      const includes = natsIncludes(source);
      // Written by `knats broker config`: without it, anyone who reaches the port may use the bus.
      if (!includes.includes('knats-accounts.conf'))
        problems.add(template, 'does not include knats-accounts.conf: NATS without authentication');
      if (/^jetstream\b/m.test(source))
        problems.add(template, 'turns JetStream on: the bus is core NATS only');
      for (const path of [
        ...conf.files.map((f) => f.path),
        ...includes.map((f) => posix.join(posix.dirname(configPath), f)),
      ])
        if (!mountOf(c, path)) problems.add(template, `${path} is not in a volume of ${at}`);
      nats.push({ pod, container: c, template, configPath, conf });
    }
  }
  if (!nats.length) problems.add(KUBERNETES_DIR, 'no nats-server: knats processes have no bus');
  const natsPort = nats[0]?.conf.port;
  /** The host file of the servers' CA, which the sidecars on the same hosts verify them with. */
  const natsCa = nats.flatMap(({ pod, container, conf }) => {
    const ca = conf.clientCa && backing(pod, container, conf.clientCa);
    return ca ? [ca] : [];
  });

  const sidecars: { pod: PodSpec; c: Container; config: FrontendSettings }[] = [];
  const agentSeeds = new Map<string, string>();
  const agentIds = new Map<string, string>();
  /** How agents reach NATS and verify it: one external name, one CA Secret, for them all. */
  const agentNatsNames = new Map<string, string>();
  const agentCaSecrets = new Map<string, string>();
  for (const pod of pods) {
    for (const c of pod.containers) {
      const checked = c.checked;
      if (!checked) continue;
      const at = `${pod.where} container ${c.name}`;
      for (const { flag, path } of filesOf(checked))
        if (!mountOf(c, flag === 'uds-name' ? posix.dirname(path) : path))
          problems.add(at, `--${flag} ${path} is not in a mounted volume`);
      const settings = natsOf(checked);
      // On the control plane (host network) the NATS server of the same node; in the cluster the
      // control plane's NATS by its external name, dialled out to like upstream's proxy-server.
      const controlPlane = pod.raw.hostNetwork === true;
      for (const server of settings?.servers ?? []) {
        const url = natsUrl(server);
        if (!url || url.port !== natsPort)
          problems.add(at, `NATS URL ${server}: expected the NATS servers' client port ${natsPort}`);
        else if (controlPlane && !isLoopback(url.host))
          problems.add(
            at,
            `NATS URL ${server}: the sidecar reaches the NATS server of its own node, tls://127.0.0.1:${natsPort}, with no path into the cluster`,
          );
        else if (!controlPlane && isClusterInternal(url.host))
          problems.add(
            at,
            `NATS URL ${server}: agents dial out to the control plane's NATS by its external name (a load balancer or DNS name in front of the control-plane nodes), not a cluster address`,
          );
        else if (!controlPlane) claim(agentNatsNames, url.host, at);
        if (!server.startsWith('tls://'))
          problems.add(at, `NATS URL ${server} is not tls://: a plaintext connection would be accepted`);
      }
      if (settings && !settings.tlsCaFile)
        problems.add(at, 'connects to NATS without --nats-tls-ca: nothing verifies the servers');
      else if (settings?.tlsCaFile && controlPlane) {
        const ca = backing(pod, c, settings.tlsCaFile);
        if (!ca || !natsCa.includes(ca))
          problems.add(
            at,
            `--nats-tls-ca ${settings.tlsCaFile} is not the CA file of the NATS servers (${natsCa.join(', ')})`,
          );
      } else if (settings?.tlsCaFile) {
        const mount = mountOf(c, settings.tlsCaFile);
        const secret = text(obj(mount && pod.volumes.get(mount.name)?.secret).secretName);
        if (!secret) problems.add(at, `--nats-tls-ca ${settings.tlsCaFile} is not from a Secret`);
        else claim(agentCaSecrets, secret, at);
      }
      if (settings && !(settings.nkeyFile || settings.credsFile || settings.user || settings.token))
        problems.add(at, 'connects to NATS without credentials, but the servers require them');
      if (checked.kind === 'frontend' || checked.kind === 'agent') {
        const { config } = checked;
        const ports = new Map(
          arr(c.raw.ports).map((p) => [text(obj(p).name) ?? '', Number(obj(p).containerPort)]),
        );
        const probes = ['livenessProbe', 'readinessProbe', 'startupProbe']
          .map((p) => obj(c.raw[p]))
          .filter((p) => p.httpGet);
        if (!probes.length) problems.add(at, 'no HTTP probe on the health port');
        for (const probe of probes) {
          const get = obj(probe.httpGet);
          const port = typeof get.port === 'number' ? get.port : ports.get(text(get.port) ?? '');
          if (port !== config.healthPort)
            problems.add(at, `probe on port ${text(get.port)}, but the health port is ${config.healthPort}`);
          if (isLoopback(config.healthBindAddress) && !(controlPlane && isLoopback(text(get.host) ?? '')))
            problems.add(
              at,
              `health port on ${config.healthBindAddress}: the kubelet's probe cannot reach it`,
            );
        }
        const grace = Number(pod.raw.terminationGracePeriodSeconds ?? 30) * 1000;
        if (grace <= config.gracefulShutdownTimeoutMs)
          problems.add(at, 'terminationGracePeriodSeconds does not exceed --graceful-shutdown-timeout');
      }
      if (checked.kind === 'frontend') sidecars.push({ pod, c, config: checked.config });
      if (checked.kind === 'agent') {
        // Per-agent credentials: its own seed, bound to its own id, run by one pod at a time.
        const { config } = checked;
        const mount = config.nats.nkeyFile ? mountOf(c, config.nats.nkeyFile) : undefined;
        const secret = text(obj(mount && pod.volumes.get(mount.name)?.secret).secretName);
        const seedOwner = secret && claim(agentSeeds, secret, at);
        if (seedOwner)
          problems.add(
            at,
            `shares its NATS seed (Secret ${secret}) with ${seedOwner}: each agent needs its own (knats broker config --agent ID)`,
          );
        const idOwner = claim(agentIds, config.id, at);
        if (idOwner) problems.add(at, `agent id ${config.id} is also used by ${idOwner}`);
        const spec = obj(pod.workload.spec);
        if (
          pod.workload.kind !== 'Pod' &&
          (Number(spec.replicas ?? 1) !== 1 || obj(spec.strategy).type !== 'Recreate')
        )
          problems.add(
            at,
            'may run agent id ' +
              `${config.id} in two pods at once: its NATS user is bound to the id, so one replica and strategy Recreate`,
          );
      }
    }
  }
  // One name in the servers' certificate, one CA.
  if (agentNatsNames.size > 1)
    problems.add(
      KUBERNETES_DIR,
      `agents reach NATS by several names: ${[...agentNatsNames.keys()].join(', ')}`,
    );
  if (agentCaSecrets.size > 1)
    problems.add(
      KUBERNETES_DIR,
      `agents verify NATS with different CA Secrets: ${[...agentCaSecrets.keys()].join(', ')}`,
    );

  // Each EgressSelectorConfiguration leads to a sidecar of a kube-apiserver pod, and each sidecar has one.
  const apiserverOf = (pod: PodSpec) =>
    pod.containers.find((c) => c.argv.some((a) => a.startsWith('--egress-selector-config-file')));
  const served = new Set<Container>();
  for (const { where, selection } of egress) {
    const connection = obj(selection.connection);
    const transport = obj(connection.transport);
    const match = sidecars.find(({ pod, c, config }) => {
      const apiserver = apiserverOf(pod);
      if (!apiserver) return false;
      if (connection.proxyProtocol === 'GRPC') {
        const udsName = text(obj(transport.uds).udsName) ?? '';
        return (
          config.mode === 'grpc' &&
          config.udsName === udsName &&
          backing(pod, apiserver, udsName) !== undefined &&
          backing(pod, apiserver, udsName) === backing(pod, c, config.udsName)
        );
      }
      if (connection.proxyProtocol === 'HTTPConnect') {
        const tcp = obj(transport.tcp);
        const url = /^https:\/\/([^:/]+):(\d+)/.exec(text(tcp.url) ?? '');
        const tls = obj(tcp.tlsConfig);
        const files = ['caBundle', 'clientCert', 'clientKey'].map((k) => text(tls[k]) ?? '');
        return (
          config.mode === 'http-connect' &&
          !!url &&
          Number(url[2]) === config.serverPort &&
          (isAnyAddress(config.serverBindAddress) || config.serverBindAddress === url[1]) &&
          files.every((f) => f && backing(pod, apiserver, f)) &&
          // kube-apiserver checks the frontend's certificate against the CA the frontend checks clients with.
          backing(pod, apiserver, files[0]!) === backing(pod, c, config.serverCaCert ?? '')
        );
      }
      return false;
    });
    if (!match)
      problems.add(
        where,
        `the cluster egress (${text(connection.proxyProtocol)}) matches no knats sidecar: udsName, url or tlsConfig differ`,
      );
    else served.add(match.c);
  }
  for (const { pod, c } of sidecars)
    if (apiserverOf(pod) && !served.has(c))
      problems.add(`${pod.where} container ${c.name}`, 'no EgressSelectorConfiguration uses this frontend');

  problems.throwIfAny(`${KUBERNETES_DIR} does not match the code`);
  return { pods, egress, nats };
}
