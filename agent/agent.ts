/**
 * An agent: holds one outbound NATS connection, answers dial requests by
 * dialing TCP destinations, and bridges each socket to a tunnel.
 */

import { lookup } from 'node:dns/promises';
import { setMaxListeners } from 'node:events';
import type { Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { parseDialAddress } from '../broker/address.js';
import { agentNeeds } from '../broker/bus/bus-permissions.js';
import { BusLink, type NatsSettings } from '../broker/bus/connection.js';
import type { PresenceSettings } from '../broker/bus/presence.js';
import { ErrorCode, isKnatsError, KnatsError } from '../broker/errors.js';
import { asPeerError } from '../broker/guard.js';
import type { Logger } from '../broker/logging.js';
import { type BusNode, type Endpoints, leaveBus, startBusNode } from '../broker/node/bus-node.js';
import { AgentDialClock } from '../broker/telemetry/dial-stages.js';
import { createBusMetrics } from '../broker/telemetry/metrics.js';
import { startTracing, type TracingSettings, traced } from '../broker/telemetry/tracing.js';
import type { CreditSettings } from '../broker/tunnel/credit.js';
import type { TunnelHostTiming } from '../broker/tunnel/tunnel-host.js';
import { VERSION } from '../broker/version.js';
import {
  type BusDialRequest,
  dialRequestCodec,
  dialResponseCodec,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
} from '../broker/wire/bus-messages.js';
import { encodeAccepted } from '../broker/wire/codec.js';
import type { AgentIdentifiers } from '../broker/wire/identifiers.js';
import { isToken, MAX_TUNNEL_ID_LENGTH, Subjects } from '../broker/wire/subjects.js';
import { dialTcp, mapSocketError } from './dialer.js';
import { createAgentMetrics } from './metrics.js';
import { type DestinationPolicy, defaultDestinationPolicy, guardedDial, withOwnEndpoints } from './policy.js';
import { bridgeSocket } from './tcp-bridge.js';

export interface AgentConfig {
  readonly id: string;
  readonly nats: NatsSettings;
  readonly subjectPrefix: string;
  readonly identifiers: AgentIdentifiers;
  readonly dialTimeoutMs: number;
  /** --allow-destinations / --deny-destinations; default: loopback, link-local and metadata endpoints denied. */
  readonly destinationPolicy?: DestinationPolicy;
  readonly healthPort: number;
  readonly healthBindAddress: string;
  readonly adminPort: number;
  readonly adminBindAddress: string;
  /** --enable-profiling: CPU profiles and heap snapshots on the admin port. */
  readonly enableProfiling?: boolean;
  readonly gracefulShutdownTimeoutMs: number;
  readonly credit: CreditSettings;
  readonly timing: TunnelHostTiming;
  readonly presence: PresenceSettings;
  readonly logger: Logger;
  /** OTLP trace export; undefined: no tracing, and OpenTelemetry is never loaded. */
  readonly tracing?: TracingSettings;
}

export interface RunningAgent {
  readonly id: string;
  readonly healthPort: number;
  readonly adminPort: number;
  readonly nc: NatsConnection;
  debugState(): Record<string, unknown>;
  /** Graceful: leaves the dial queues, serves open tunnels up to the timeout. */
  stop(options?: { immediate?: boolean }): Promise<void>;
}

export async function startAgent(config: AgentConfig): Promise<RunningAgent> {
  const logger = config.logger.child({ agentId: config.id });
  const subjects = new Subjects(config.subjectPrefix);
  let draining = false;
  let stopped = false;
  let pendingDials = 0;
  const sockets = new Set<Socket>();
  const dialAborts = new AbortController();
  // Every pending dial listens on this one signal; their number is bounded elsewhere, not by a warning.
  setMaxListeners(0, dialAborts.signal);

  const busMetrics = createBusMetrics();
  const metrics = createAgentMetrics(busMetrics.registry);
  const link = new BusLink();
  const tracing = await startTracing(config.tracing, { role: 'agent', id: config.id }, logger);
  let node: BusNode | undefined;
  let subscribed = false;
  const debugState = () => ({
    id: config.id,
    role: 'agent',
    bus: link.notReadyReason() ?? 'ok',
    tunnels: node?.host.size ?? 0,
    unconfirmedTunnels: node?.host.unconfirmedCount ?? 0,
    blockedTunnels: node?.host.blockedCount ?? 0,
    sockets: sockets.size,
    socketLocalPorts: [...sockets].map((s) => s.localPort),
    pendingDials,
    maxBuffered: node?.host.maxBuffered() ?? 0,
    receiveBudgetInUse: node?.host.budget.inUse ?? 0,
    frontends: node?.presence.count('frontend') ?? 0,
    draining,
  });
  let endpoints: Endpoints;
  ({ node, endpoints } = await startBusNode(
    {
      role: 'agent',
      id: config.id,
      nats: config.nats,
      subjects,
      credit: config.credit,
      timing: config.timing,
      presence: config.presence,
      logger,
      identifiers: config.identifiers.text,
      proxyStrategies: '',
      isDraining: () => draining,
      takesDials: () => subscribed,
      metrics: busMetrics,
      link,
      needs: () => agentNeeds(subjects, config.id, config.identifiers.text),
      tracing,
    },
    config,
    {
      portFlags: { health: 'health-server-port', admin: 'admin-server-port' },
      debugState,
      roleNotReady: () => (subscribed ? undefined : 'not subscribed for dials'),
    },
  ));
  const busNode = node;
  const { nc, host: tunnelHost, presence } = busNode;

  // Counted on every dial: label children resolved once.
  const dialRequests = metrics.streamPackets.labels('to_agent', 'DIAL_REQ');
  const dialResponses = metrics.streamPackets.labels('from_agent', 'DIAL_RSP');
  const reply = (msg: Msg, tunnelId: string, err?: KnatsError, initialWindow = 0, stageMicros?: number[]) => {
    dialResponses.inc();
    msg.respond(
      dialResponseCodec.encode({
        protocolVersion: PROTOCOL_VERSION,
        tunnelId,
        agentId: config.id,
        errorCode: err?.code ?? '',
        errorMessage: err?.message ?? '',
        initialWindow,
        stageMicros,
      }),
    );
  };

  // Our own health/admin ports (as bound: a port of 0 was picked by the OS) are never a destination.
  const ownAddresses = Object.values(networkInterfaces()).flatMap((list) =>
    (list ?? []).map((a) => a.address),
  );
  const policy = withOwnEndpoints(
    config.destinationPolicy ?? defaultDestinationPolicy,
    [endpoints.healthPort, endpoints.adminPort],
    ownAddresses,
  );
  /** Tunnel ids of dials in flight, so a replayed id cannot take over a tunnel. */
  const dialingTunnelIds = new Set<string>();

  const onDial = async (msg: Msg) => {
    const clock = new AgentDialClock();
    dialRequests.inc();
    // Anything on the dial subjects may be hostile: validate before logging or echoing a field.
    const refuse = (err: KnatsError, tunnelId = '') => {
      metrics.countDialFailure(err.code);
      logger.warn(
        { code: err.code, reason: err.message, replySubject: Boolean(msg.reply) },
        'dial request refused',
      );
      if (msg.reply) reply(msg, tunnelId, err);
    };
    if (!msg.reply) {
      refuse(new KnatsError(ErrorCode.MalformedFrame, 'dial request without a reply subject'));
      return;
    }
    let request: BusDialRequest;
    try {
      request = dialRequestCodec.decode(msg.data);
    } catch {
      refuse(new KnatsError(ErrorCode.MalformedFrame, `malformed dial request (${msg.data.length} bytes)`));
      return;
    }
    const invalid = invalidDialRequest(request);
    if (invalid) {
      refuse(invalid, isToken(request.tunnelId, MAX_TUNNEL_ID_LENGTH) ? request.tunnelId : '');
      return;
    }
    if (tunnelHost.get(request.tunnelId) || dialingTunnelIds.has(request.tunnelId)) {
      refuse(new KnatsError(ErrorCode.MalformedFrame, 'dial request reuses a live tunnel id'));
      return;
    }
    if (pendingDials >= MAX_PENDING_DIALS) {
      refuse(
        new KnatsError(ErrorCode.TooManyPendingDials, `${pendingDials} dials already pending on this agent`),
        request.tunnelId,
      );
      return;
    }
    const dialLogger = logger.child({
      tunnelId: request.tunnelId,
      frontendId: request.frontendId,
      destination: request.address,
    });
    // The agent's side of the tunnel's trace: its life, under the frontend's bus request.
    const span = tracing.start(
      'knats.agent.tunnel',
      {
        'knats.tunnel_id': request.tunnelId,
        'knats.agent_id': config.id,
        'knats.destination': request.address,
      },
      { parent: request.traceparent, kind: 'server' },
    );
    const fail = (err: KnatsError) => {
      span.end(err);
      metrics.countDialFailure(err.code);
      if (err.code === ErrorCode.DestinationDenied) {
        dialLogger.warn({ code: err.code, reason: err.message }, 'dial denied by destination policy');
      } else {
        dialLogger.info({ code: err.code, reason: err.message }, 'dial failed');
      }
      reply(msg, request.tunnelId, err);
    };
    if (draining) {
      fail(new KnatsError(ErrorCode.ShuttingDown, 'agent is draining'));
      return;
    }
    // The frontend takes an agent that stays silent for its accept timeout for dead (see BusDialer): a dial
    // not answered within half of it is acknowledged first; a quick answer is its own acknowledgement, so
    // only the request and the answer cross the bus. Frontends that do not say their timeout get it at once.
    const acknowledge = () =>
      nc.publish(subjects.frontendTunnel(request.frontendId, request.tunnelId), encodeAccepted());
    let acknowledgeTimer: NodeJS.Timeout | undefined;
    // Node's timers take at most 2^31-1 ms; the field is a peer's uint32.
    if (request.acceptTimeoutMs)
      acknowledgeTimer = setTimeout(acknowledge, Math.min(request.acceptTimeoutMs / 2, 2 ** 31 - 1));
    else acknowledge();
    let socket: Socket;
    let ip: string;
    const started = process.hrtime.bigint();
    pendingDials++;
    dialingTunnelIds.add(request.tunnelId);
    // Destination policy, DNS and the TCP connects it allows.
    const policySpan = span.child('knats.agent.policy');
    clock.lap(0);
    try {
      const address = parseDialAddress(request.address);
      const timeout = Math.min(config.dialTimeoutMs, request.dialTimeoutMs || config.dialTimeoutMs);
      ({ socket, ip } = await guardedDial(policy, address, timeout, {
        lookup: async (host) => (await lookup(host, { all: true, verbatim: true })).map((a) => a.address),
        dial: (to, port, ms) => {
          clock.lap(1);
          return traced(
            policySpan.child('knats.tcp_connect', { 'network.peer.address': to, 'network.peer.port': port }),
            dialTcp({ host: to, port }, ms, dialAborts.signal),
          ).finally(() => clock.lap(2));
        },
        lookupError: (err, host) => mapSocketError(err as NodeJS.ErrnoException, `${host}:${address.port}`),
      }));
      clock.lap(1);
      policySpan.end();
    } catch (err) {
      const error = isKnatsError(err) ? err : new KnatsError(ErrorCode.DialFailed, String(err));
      policySpan.end(error);
      fail(error);
      return;
    } finally {
      clearTimeout(acknowledgeTimer);
      pendingDials--;
      dialingTunnelIds.delete(request.tunnelId);
    }
    metrics.dialDuration.observe(Number(process.hrtime.bigint() - started) / 1e9);
    const tunnel = tunnelHost.create(
      request.tunnelId,
      subjects.agentTunnel(config.id, request.tunnelId),
      // `logger` names this agent already.
      dialLogger,
    );
    tunnel.open(
      request.frontendId,
      subjects.frontendTunnel(request.frontendId, request.tunnelId),
      request.initialWindow,
      request.protocolVersion,
    );
    presence.touch(request.frontendId, 'frontend');
    tracing.bindTunnel(tunnel, span);
    tunnelHost.bindPeer(tunnel, true);
    sockets.add(socket);
    metrics.openEndpointConnections.inc();
    bridgeSocket(tunnel, socket, () => {
      sockets.delete(socket);
      metrics.openEndpointConnections.dec();
    });
    clock.lap(3);
    reply(msg, request.tunnelId, undefined, tunnel.initialWindow, clock.stageMicros);
    tunnel.logger.info({ localPort: socket.localPort, ip }, 'tunnel open');
  };

  // Dials come only on our own subject: the frontend chooses the agent (no queue group, whose share any
  // agent could take by opening many subscriptions).
  const dialSubject = subjects.dialAgent(config.id);
  const dialSubscription: Subscription = nc.subscribe(dialSubject, {
    callback: (err, msg) => {
      if (err) {
        subscribed = false;
        logger.error(
          { code: ErrorCode.BusPermission, subject: dialSubject, reason: err.message },
          'dial subscription failed',
        );
      } else {
        // A dial request is peer input: whatever it makes throw costs that dial, never the process.
        onDial(msg).catch((thrown) => {
          const error = asPeerError(thrown);
          logger.error({ code: error.code, reason: error.message }, 'dial request failed');
        });
      }
    },
  });
  // Make sure the server has our subscriptions before we report ready.
  await nc.flush();
  subscribed = true;
  presence.beat(); // taking dials now: tell the fleet at once, not at the next heartbeat
  logger.info({ identifiers: config.identifiers.text, version: VERSION }, 'agent ready');

  return {
    id: config.id,
    healthPort: endpoints.healthPort,
    adminPort: endpoints.adminPort,
    nc,
    debugState,
    async stop({ immediate = false } = {}) {
      if (stopped) return;
      stopped = true;
      draining = true;
      // Stop taking dials first (one that crossed this is answered ShuttingDown, and the frontend moves on), then tell the fleet.
      dialSubscription.unsubscribe();
      subscribed = false;
      presence.beat();
      logger.info({ tunnels: tunnelHost.size, immediate }, 'agent stopping');
      const deadline = Date.now() + (immediate ? 0 : config.gracefulShutdownTimeoutMs);
      await leaveBus(busNode, deadline, 'agent stopping');
      dialAborts.abort();
      for (const socket of sockets) socket.destroy();
      await endpoints.close();
      await tracing.shutdown();
      logger.info('agent stopped');
    },
  };
}

/** Dials in flight per agent; beyond it a dial is answered at once with TooManyPendingDials. */
const MAX_PENDING_DIALS = 1024;
/** host:port with the longest DNS name (253) fits with room to spare; longer is hostile or broken. */
const MAX_ADDRESS_BYTES = 1024;

/** The fields of a dial request that must be sane before it is logged, echoed or acted on. */
function invalidDialRequest(request: BusDialRequest): KnatsError | undefined {
  // Both become subject tokens of the tunnel's frames.
  if (!isToken(request.tunnelId, MAX_TUNNEL_ID_LENGTH)) {
    return new KnatsError(ErrorCode.MalformedFrame, 'dial request with an invalid tunnel id');
  }
  if (!isToken(request.frontendId)) {
    return new KnatsError(ErrorCode.MalformedFrame, 'dial request with an invalid frontend id');
  }
  if (request.protocolVersion < MIN_PROTOCOL_VERSION) {
    return new KnatsError(
      ErrorCode.IncompatiblePeer,
      `frontend speaks bus protocol ${request.protocolVersion}, this agent needs >= ${MIN_PROTOCOL_VERSION}`,
    );
  }
  if (request.protocol !== 'tcp') {
    const shown = request.protocol.length > 32 ? `${request.protocol.slice(0, 32)}...` : request.protocol;
    return new KnatsError(ErrorCode.BadAddress, `unsupported protocol ${JSON.stringify(shown)} (only tcp)`);
  }
  if (request.address.length > MAX_ADDRESS_BYTES) {
    return new KnatsError(
      ErrorCode.BadAddress,
      `address of ${request.address.length} bytes exceeds the limit of ${MAX_ADDRESS_BYTES}`,
    );
  }
  return undefined;
}
