/**
 * docker-compose.yml checked against the real code: the Compose
 * Specification's schema, every knats command line through the CLI's own
 * validation, and the wiring around them (services, volumes, files, NATS
 * URLs and users, health checks, UDS paths, proxy addresses).
 */
import assert from 'node:assert/strict';
import { posix } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseDuration } from '../../cli/duration.js';
import {
  type ComposeReport,
  composeEnv,
  composeMounts,
  interpolate,
  type Mount,
  type Service,
  splitCommand,
} from './compose-fields.js';
import {
  arr,
  COMPOSE_FILE,
  claim,
  type Obj,
  obj,
  Problems,
  type Repo,
  text,
  underDir,
} from './deploy-repo.js';
import { composeSchemaErrors } from './deploy-schemas.js';
import { parseDockerfile } from './dockerfile.js';
import { checkInvocation, filesOf, isAnyAddress, isLoopback, natsOf, natsUrl } from './knats-invocation.js';
import { checkNatsTls, natsIncludes, parseAuthUsers, readNatsConf } from './nats-conf.js';
import { programOf, type ShellCommand, shellCommands } from './shell-reader.js';

export function checkCompose(repo: Repo): ComposeReport {
  const problems = new Problems();
  const source = repo.read(COMPOSE_FILE);
  assert.ok(source, `${COMPOSE_FILE} is missing`);
  const doc = interpolate(parseYaml(source, { merge: true }), COMPOSE_FILE, problems) as Obj;
  for (const error of composeSchemaErrors(doc)) problems.add(COMPOSE_FILE, `Compose Specification: ${error}`);
  const imageSource = repo.read('Dockerfile');
  assert.ok(imageSource, 'Dockerfile is missing');
  const image = parseDockerfile(imageSource);
  const declaredVolumes = new Set(Object.keys(obj(doc.volumes)));
  const declaredNetworks = new Set(Object.keys(obj(doc.networks)));

  // --- services, as the engine would run them
  const services = new Map<string, Service>();
  for (const [name, value] of Object.entries(obj(doc.services))) {
    const raw = obj(value);
    const where = `${COMPOSE_FILE} services.${name}`;
    const imageName = text(raw.image) ?? '';
    const ours = raw.build !== undefined || /konnectivity-nats/.test(imageName);
    const entrypoint = splitCommand(raw.entrypoint, `${where}.entrypoint`, problems);
    const command = splitCommand(raw.command, `${where}.command`, problems);
    // Docker: a service's entrypoint replaces the image's and drops the image's CMD too.
    const argv = ours
      ? entrypoint
        ? [...entrypoint, ...(command ?? [])]
        : [...image.entrypoint, ...(command ?? image.cmd)]
      : [...(entrypoint ?? []), ...(command ?? [])];
    const networks = Array.isArray(raw.networks)
      ? raw.networks.map((n) => text(n) ?? '')
      : raw.networks
        ? Object.keys(obj(raw.networks))
        : ['default'];
    const dependsOn = new Map<string, string>();
    if (Array.isArray(raw.depends_on))
      for (const d of raw.depends_on) dependsOn.set(text(d) ?? '', 'service_started');
    else
      for (const [d, spec] of Object.entries(obj(raw.depends_on)))
        dependsOn.set(d, text(obj(spec).condition) ?? 'service_started');
    services.set(name, {
      name,
      raw,
      ours,
      image: imageName,
      env: composeEnv(raw.environment),
      argv,
      mounts: composeMounts(raw.volumes),
      networks,
      dependsOn,
      checked: [],
      curls: [],
    });
  }

  const where = (svc: Service) => `${COMPOSE_FILE} services.${svc.name}`;
  const sharesNetwork = (a: Service, b: Service) => a.networks.some((n) => b.networks.includes(n));
  const dependencies = (svc: Service): Set<string> => {
    const seen = new Set<string>();
    const visit = (name: string) => {
      for (const dep of services.get(name)?.dependsOn.keys() ?? []) {
        if (!seen.has(dep)) {
          seen.add(dep);
          visit(dep);
        }
      }
    };
    visit(svc.name);
    return seen;
  };
  type Location =
    | { kind: 'repo'; path: string }
    | { kind: 'volume'; volume: string; sub: string; readOnly: boolean }
    | { kind: 'image' };
  /** Where a container path of a service comes from. */
  const locate = (svc: Service, path: string): Location | undefined => {
    let best: { mount: Mount; rest: string } | undefined;
    for (const mount of svc.mounts) {
      const rest = underDir(path, mount.target);
      if (rest !== undefined && (!best || mount.target.length > best.mount.target.length))
        best = { mount, rest };
    }
    if (best) {
      const { mount, rest } = best;
      if (mount.kind === 'bind') return { kind: 'repo', path: posix.join(mount.source, rest) };
      return { kind: 'volume', volume: mount.source, sub: rest, readOnly: mount.readOnly };
    }
    if (!svc.ours) return undefined;
    for (const copy of image.copies) {
      const rest = underDir(path, copy.dest);
      if (rest !== undefined) return { kind: 'repo', path: posix.join(copy.src, rest) };
    }
    return path.startsWith('/app/') ? { kind: 'image' } : undefined;
  };
  const requireRepoFile = (svc: Service, path: string, what: string) => {
    const loc = locate(svc, path);
    if (loc?.kind === 'repo') {
      if (!repo.exists(loc.path))
        problems.add(where(svc), `${what} ${path} is ${loc.path} in the repository, which does not exist`);
    } else if (!loc)
      problems.add(where(svc), `${what} ${path} is neither in the image nor in a mounted folder`);
    return loc;
  };
  /** A file read from a named volume must be written there by a service started before. */
  const requireProduced = (svc: Service, path: string, what: string) => {
    const loc = locate(svc, path);
    if (!loc) {
      problems.add(where(svc), `${what} ${path} is neither in the image nor in a mounted volume`);
      return;
    }
    if (loc.kind === 'repo') {
      if (!repo.exists(loc.path))
        problems.add(where(svc), `${what} ${path} (${loc.path}) does not exist in the repository`);
      return;
    }
    if (loc.kind !== 'volume') return;
    const producers = [...dependencies(svc)].filter((name) =>
      services.get(name)?.mounts.some((m) => m.kind === 'volume' && m.source === loc.volume && !m.readOnly),
    );
    if (!producers.length)
      problems.add(
        where(svc),
        `${what} ${path} is in volume ${loc.volume}, which no service it depends on writes`,
      );
  };

  // --- NATS services: config files, routes, names
  const natsServices = [...services.values()].filter((s) => /^nats(:|$)/.test(s.image));
  let natsPort = 4222;
  let natsUsers = new Map<string, string>();
  const natsNames = new Set<string>();
  /** Where the NATS servers' CA lives (a volume), which every client must verify them with. */
  let natsCa: Location | undefined;
  for (const svc of natsServices) {
    const args = svc.argv[0] === 'nats-server' ? svc.argv.slice(1) : svc.argv;
    const optionValue = (...names: string[]) => {
      const i = args.findIndex((a) => names.includes(a));
      return i >= 0 ? args[i + 1] : undefined;
    };
    const name = optionValue('--name', '-n', '--server_name');
    if (!name) problems.add(where(svc), 'nats-server without --name: cluster nodes need distinct names');
    else if (natsNames.has(name)) problems.add(where(svc), `nats-server name ${name} is used twice`);
    else natsNames.add(name);
    const config = optionValue('--config', '-c');
    if (!config) {
      problems.add(where(svc), 'nats-server without --config');
      continue;
    }
    const loc = requireRepoFile(svc, config, 'NATS configuration');
    if (loc?.kind !== 'repo') continue;
    const conf = repo.read(loc.path) ?? '';
    let all = conf;
    for (const include of natsIncludes(conf)) {
      const included = posix.join(posix.dirname(loc.path), include);
      const body = repo.read(included);
      if (body === undefined) problems.add(loc.path, `includes ${include}, which does not exist`);
      else all += `\n${body}`;
    }
    const nats = readNatsConf(all);
    natsPort = nats.port;
    natsUsers = parseAuthUsers(all);
    // TLS for clients and for routes, with files this service gets.
    checkNatsTls(loc.path, nats, problems);
    for (const { key, path } of nats.files) requireProduced(svc, path, `NATS ${key}`);
    if (nats.clientCa) natsCa = locate(svc, nats.clientCa);
    const clusterPort = nats.clusterPort;
    for (const m of all.matchAll(/nats-route:\/\/(?:[^@\s]*@)?([^:\s]+):(\d+)/g)) {
      const peer = services.get(m[1]!);
      if (!peer || !natsServices.includes(peer))
        problems.add(loc.path, `route to ${m[1]}, which is not a NATS service`);
      else if (!sharesNetwork(svc, peer))
        problems.add(where(svc), `cannot reach its route ${m[1]}: no shared network`);
      if (clusterPort && m[2] !== clusterPort)
        problems.add(loc.path, `route ${m[0]} does not use the cluster port ${clusterPort}`);
    }
  }

  /** The service running gen-certs.sh into the NATS servers' certificate volume issues it for `host`. */
  const requireNamedByCertificate = (at: string, host: string) => {
    if (natsCa?.kind !== 'volume') return;
    const volume = natsCa.volume;
    for (const producer of services.values()) {
      if (!producer.mounts.some((m) => m.source === volume && !m.readOnly)) continue;
      const gen = producer.argv.findIndex((a) => /gen-certs\.sh$/.test(a));
      const names = gen >= 0 ? producer.argv.slice(gen + 2) : [];
      if (gen >= 0 && !names.includes(host))
        problems.add(at, `${producer.name} issues the NATS certificate for ${names.join(', ')}, not ${host}`);
    }
  };

  // --- every service: references, then its knats command lines
  for (const svc of services.values()) {
    for (const [dep, condition] of svc.dependsOn) {
      const target = services.get(dep);
      if (!target) problems.add(where(svc), `depends_on ${dep}, which is not a service`);
      else if (condition === 'service_healthy' && !target.raw.healthcheck)
        problems.add(where(svc), `waits for ${dep} to be healthy, but ${dep} has no healthcheck`);
      else if (
        condition === 'service_completed_successfully' &&
        !['no', undefined].includes(text(target.raw.restart))
      )
        problems.add(where(svc), `waits for ${dep} to complete, but ${dep} restarts`);
    }
    for (const mount of svc.mounts) {
      if (mount.kind === 'volume' && !declaredVolumes.has(mount.source))
        problems.add(where(svc), `volume ${mount.source} is not declared under volumes:`);
      if (mount.kind === 'bind' && !repo.exists(mount.source))
        problems.add(where(svc), `bind mount ${mount.source} does not exist in the repository`);
    }
    for (const network of svc.networks)
      if (network !== 'default' && !declaredNetworks.has(network))
        problems.add(where(svc), `network ${network} is not declared under networks:`);
    if (!svc.ours) continue;

    // What the container runs: the CLI itself, a shell (script or -c), or another program.
    const [program = '', ...args] = svc.argv;
    let shell: { src: string; positional: string[] } | undefined;
    if (programOf(svc.argv).program === 'knats') {
      const { args: knatsArgs } = programOf(svc.argv);
      const checked = checkInvocation({ where: where(svc), argv: knatsArgs, env: svc.env }, problems);
      if (checked) svc.checked.push(checked);
    } else if (/(^|\/)(sh|bash|dash|ash)$/.test(program)) {
      if (args[0] === '-c') shell = { src: args[1] ?? '', positional: args.slice(3) };
      else if (args[0]) {
        const loc = requireRepoFile(svc, args[0], 'script');
        const body = loc?.kind === 'repo' ? repo.read(loc.path) : undefined;
        if (body !== undefined) shell = { src: body, positional: args.slice(1) };
      }
    } else if (/(^|\/)node$/.test(program) && args[0] && !args[0].startsWith('-')) {
      requireRepoFile(svc, args[0], 'script');
    }
    if (shell) {
      let commands: ShellCommand[] = [];
      try {
        commands = shellCommands(shell.src, svc.env, shell.positional);
      } catch (err) {
        problems.add(where(svc), `cannot read its shell script: ${(err as Error).message}`);
      }
      for (const command of commands) {
        const { program: name, args: rest } = programOf(command.words);
        if (name === 'knats') {
          const inv = { where: `${where(svc)} (shell)`, argv: rest, env: { ...svc.env, ...command.env } };
          const checked = checkInvocation(inv, problems);
          if (checked) svc.checked.push(checked);
        } else if (name === 'curl') svc.curls.push(rest);
        else if (name === 'sh' && rest[0]) requireRepoFile(svc, rest[0], 'script');
      }
    }
  }

  // --- what the knats command lines refer to
  const frontends = [...services.values()].flatMap((s) =>
    s.checked.flatMap((c) => (c.kind === 'frontend' ? [{ svc: s, config: c.config }] : [])),
  );
  const agents = [...services.values()].flatMap((s) =>
    s.checked.flatMap((c) => (c.kind === 'agent' ? [{ svc: s, config: c.config }] : [])),
  );
  const ids = new Map<string, string>();
  for (const { svc, config } of [...frontends, ...agents]) {
    const owner = claim(ids, config.id, svc.name);
    if (owner) problems.add(where(svc), `bus id ${config.id} is also used by ${owner}`);
  }
  // Per-agent credentials: a NATS user bound to one agent id each.
  const agentUsers = new Map<string, string>();
  for (const { svc, config } of agents) {
    const owner = config.nats.user && claim(agentUsers, config.nats.user, svc.name);
    if (owner)
      problems.add(
        where(svc),
        `shares NATS user ${config.nats.user} with ${owner}: each agent needs its own (knats broker config --agent ID)`,
      );
  }

  for (const svc of services.values()) {
    for (const checked of svc.checked) {
      const at = checked.inv.where;
      // Files: in the repository, or produced in a volume by a service started before.
      for (const { flag, path } of filesOf(checked)) {
        if (checked.kind === 'frontend' && flag === 'uds-name') continue;
        requireProduced(svc, path, `--${flag}`);
      }
      // NATS: every URL reaches a NATS service, with a user the configuration knows.
      const nats = natsOf(checked);
      if (nats) {
        for (const server of nats.servers) {
          const url = natsUrl(server);
          const target = url && services.get(url.host);
          if (!url || !target || !natsServices.includes(target))
            problems.add(at, `NATS URL ${server} does not name a NATS service`);
          else if (!sharesNetwork(svc, target))
            problems.add(at, `cannot reach ${url.host}: no shared network`);
          else if (url.port !== natsPort)
            problems.add(at, `NATS URL ${server}: the servers listen on ${natsPort}`);
          if (!server.startsWith('tls://'))
            problems.add(at, `NATS URL ${server} is not tls://: a plaintext connection would be accepted`);
          else if (url && target) requireNamedByCertificate(at, url.host);
        }
        const ca = nats.tlsCaFile ? locate(svc, nats.tlsCaFile) : undefined;
        if (!nats.tlsCaFile)
          problems.add(at, 'connects to NATS without --nats-tls-ca: nothing verifies the servers');
        else if (
          natsCa?.kind === 'volume' &&
          (ca?.kind !== 'volume' || ca.volume !== natsCa.volume || ca.sub !== natsCa.sub)
        )
          problems.add(at, `--nats-tls-ca ${nats.tlsCaFile} is not the CA of the NATS servers' certificate`);
        if (natsUsers.size) {
          if (!nats.user) problems.add(at, 'connects to NATS without a user, but the servers require one');
          else if (!natsUsers.has(nats.user))
            problems.add(at, `NATS user ${nats.user} is not a user of the NATS configuration`);
          else if (natsUsers.get(nats.user) !== nats.password)
            problems.add(at, `the password of NATS user ${nats.user} differs from the NATS configuration`);
        }
      }
      if (checked.kind === 'frontend' || checked.kind === 'agent') {
        const { config } = checked;
        // Health checks probe the port the process serves its health on.
        const test = arr(obj(svc.raw.healthcheck).test)
          .map((t) => text(t) ?? '')
          .join(' ');
        const probe = /https?:\/\/(127\.0\.0\.1|localhost|\[::1\]):(\d+)\/(readyz|healthz)/.exec(test);
        if (!probe) problems.add(at, 'no healthcheck on /readyz or /healthz of the health port');
        else if (Number(probe[2]) !== config.healthPort)
          problems.add(
            at,
            `healthcheck probes port ${probe[2]}, but the health port is ${config.healthPort}`,
          );
        if (!isAnyAddress(config.healthBindAddress) && !isLoopback(config.healthBindAddress))
          problems.add(
            at,
            `health port bound to ${config.healthBindAddress}: the healthcheck cannot reach it`,
          );
        // Docker must give a draining process the time it is told it has.
        const grace = parseDuration(text(svc.raw.stop_grace_period) ?? '10s') ?? 10_000;
        if (grace <= config.gracefulShutdownTimeoutMs)
          problems.add(
            at,
            `stop_grace_period ${text(svc.raw.stop_grace_period) ?? '10s (default)'} does not exceed --graceful-shutdown-timeout`,
          );
      }
      if (checked.kind === 'frontend' && checked.config.udsName) {
        const loc = locate(svc, posix.dirname(checked.config.udsName));
        if (loc?.kind !== 'volume' || loc.readOnly)
          problems.add(at, `--uds-name ${checked.config.udsName} is not in a writable shared volume`);
      }
      if (checked.kind === 'agent') {
        for (const host of checked.config.identifiers.host) {
          const dest = services.get(host);
          if (!dest) problems.add(at, `identifier host=${host} is not a service`);
          else if (!sharesNetwork(svc, dest))
            problems.add(at, `identifier host=${host}: the agent cannot reach it`);
        }
      }
      if (checked.kind === 'dial') {
        const uds = checked.flags.string('uds-name');
        const tcp = checked.flags.string('server-address');
        if (uds) {
          const mine = locate(svc, uds);
          const served = frontends.find(({ svc: f, config }) => {
            if (config.mode !== 'grpc' || !config.udsName) return false;
            const theirs = locate(f, config.udsName);
            return (
              mine?.kind === 'volume' &&
              theirs?.kind === 'volume' &&
              mine.volume === theirs.volume &&
              mine.sub === theirs.sub
            );
          });
          if (!served)
            problems.add(at, `dials --uds-name ${uds}, which no gRPC frontend serves in a shared volume`);
          else if (!dependencies(svc).has(served.svc.name))
            problems.add(at, `dials ${served.svc.name} without depending on it`);
        }
        if (tcp) checkTcpDoor(svc, at, tcp, 'grpc');
      }
    }
    for (const curl of svc.curls) {
      const at = `${where(svc)} (shell: curl)`;
      const option = (name: string) => {
        const i = curl.indexOf(name);
        return i >= 0 ? curl[i + 1] : undefined;
      };
      const proxy = option('--proxy') ?? option('-x');
      if (!proxy) continue;
      const url = /^(https?):\/\/([^:/]+):(\d+)/.exec(proxy);
      if (!url) {
        problems.add(at, `--proxy ${proxy}: expected https://HOST:PORT`);
        continue;
      }
      if (url[1] !== 'https') problems.add(at, `--proxy ${proxy}: TCP frontends speak TLS only`);
      if (!curl.includes('--proxytunnel') && !curl.includes('-p') && curl.some((a) => /^http:\/\//.test(a)))
        problems.add(
          at,
          'curl forwards http:// URLs as plain proxy requests without --proxytunnel; frontends take CONNECT only',
        );
      const door = checkTcpDoor(svc, at, `${url[2]}:${url[3]}`, 'http-connect');
      for (const flag of ['--proxy-cacert', '--proxy-cert', '--proxy-key']) {
        const path = option(flag);
        if (!path) problems.add(at, `${flag} missing: the frontend requires client certificates (mTLS)`);
        else requireProduced(svc, path, flag);
      }
      // The frontend's certificate must name the host the client connects to.
      const certPath = door?.config.serverCert;
      const certLoc = door && certPath ? locate(door.svc, certPath) : undefined;
      if (certLoc?.kind === 'volume') {
        for (const producer of services.values()) {
          if (!producer.mounts.some((m) => m.source === certLoc.volume && !m.readOnly)) continue;
          const gen = producer.argv.findIndex((a) => /gen-certs\.sh$/.test(a));
          const names = gen >= 0 ? producer.argv.slice(gen + 2) : [];
          if (gen >= 0 && names.length && !names.includes(url[2]!))
            problems.add(
              at,
              `${producer.name} issues the frontend certificate for ${names.join(', ')}, not ${url[2]}`,
            );
        }
      }
    }
  }

  /** A client reaching a TCP frontend: the service exists, listens there, reachable, right mode. */
  function checkTcpDoor(client: Service, at: string, hostPort: string, mode: 'grpc' | 'http-connect') {
    const [host = '', port = ''] = hostPort.split(':');
    const door = frontends.find(({ svc, config }) => svc.name === host && config.serverPort === Number(port));
    if (!door) {
      problems.add(at, `${hostPort} is not the TCP port of a frontend`);
      return undefined;
    }
    if (door.config.mode !== mode)
      problems.add(at, `${hostPort} serves --mode ${door.config.mode}, not ${mode}`);
    if (!sharesNetwork(client, door.svc)) problems.add(at, `cannot reach ${host}: no shared network`);
    if (!isAnyAddress(door.config.serverBindAddress))
      problems.add(
        at,
        `${host} listens on ${door.config.serverBindAddress} only: other containers cannot reach it`,
      );
    if (!dependencies(client).has(host)) problems.add(at, `uses ${host} without depending on it`);
    return door;
  }

  // The demo destinations: reachable by an agent, and by no frontend (tunnels really cross the bus).
  for (const svc of services.values()) {
    for (const target of (svc.env.DEMO_TARGETS ?? '').split(/\s+/).filter(Boolean)) {
      const host = target.split(':')[0] ?? '';
      const dest = services.get(host);
      if (!dest) problems.add(where(svc), `DEMO_TARGETS names ${host}, which is not a service`);
      else {
        if (!agents.some(({ svc: a }) => sharesNetwork(a, dest)))
          problems.add(where(svc), `no agent can reach ${host}`);
        for (const { svc: f } of frontends)
          if (sharesNetwork(f, dest))
            problems.add(where(svc), `${f.name} reaches ${host} directly, bypassing the bus`);
      }
    }
  }

  problems.throwIfAny(`${COMPOSE_FILE} does not match the code`);
  return { services, natsUsers };
}
