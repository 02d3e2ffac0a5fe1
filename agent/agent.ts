/**
 * An agent: holds one outbound NATS connection, answers dial requests by
 * dialing TCP destinations, and bridges each socket to a tunnel.
 */
import { setMaxListeners } from 'node:events';
import type { Socket } from 'node:net';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  type BusDialRequest,
  dialRequestCodec,
  dialResponseCodec,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
} from '../broker/bus-messages.js';
import { connectBus, type NatsSettings } from '../broker/connection.js';
import type { CreditSettings } from '../broker/credit.js';
import { ErrorCode, isKnatsError, KnatsError, reasonLabel } from '../broker/errors.js';
import { startHealthServer } from '../broker/health-server.js';
import type { Logger } from '../broker/logging.js';
import { createBusMetrics } from '../broker/metrics.js';
import { Presence, type PresenceSettings } from '../broker/presence.js';
import { AGENT_QUEUE, Subjects } from '../broker/subjects.js';
import { TunnelHost, type TunnelHostTiming } from '../broker/tunnel-host.js';
import { VERSION } from '../broker/version.js';
import { parseDialAddress } from './address.js';
import { dialTcp } from './dialer.js';
import type { AgentIdentifiers } from './identifiers.js';
import { createAgentMetrics } from './metrics.js';
import { bridgeSocket } from './tcp-bridge.js';

export interface AgentConfig {
  readonly id: string;
  readonly nats: NatsSettings;
  readonly subjectPrefix: string;
  readonly identifiers: AgentIdentifiers;
  readonly dialTimeoutMs: number;
  readonly healthPort: number;
  readonly healthBindAddress: string;
  readonly adminPort: number;
  readonly adminBindAddress: string;
  readonly gracefulShutdownTimeoutMs: number;
  readonly credit: CreditSettings;
  readonly timing: TunnelHostTiming;
  readonly presence: PresenceSettings;
  readonly logger: Logger;
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
  const startedAt = Date.now();
  const bus = createBusMetrics('agent');
  const metrics = createAgentMetrics(bus.registry);
  let host: TunnelHost | undefined;
  let draining = false;
  let stopped = false;
  let pendingDials = 0;
  const sockets = new Set<Socket>();
  const dialAborts = new AbortController();
  // Every pending dial listens on this one signal; their number is bounded elsewhere, not by a warning.
  setMaxListeners(0, dialAborts.signal);

  const nc = await connectBus(config.nats, `knats-agent-${config.id}`, logger, {
    disconnected: () => host?.onDisconnect(),
    reconnected: () => {
      bus.reconnects.inc();
      host?.onReconnect();
    },
  });
  const tunnelHost = new TunnelHost({
    nc,
    subscribeSubject: subjects.agentTunnels(config.id),
    credit: config.credit,
    timing: config.timing,
    logger,
    onTunnelEnded: (tunnel, err) => {
      bus.tunnelEnded(tunnel.bytesIn, tunnel.bytesOut, err);
      tunnel.logger.info(
        {
          bytesIn: tunnel.bytesIn,
          bytesOut: tunnel.bytesOut,
          durationMs: Date.now() - tunnel.openedAt,
          reason: err?.code ?? 'ok',
          message: err?.message,
        },
        'tunnel closed',
      );
    },
  });
  host = tunnelHost;
  bus.watchHost(() => host);

  const presence = new Presence({
    nc,
    subjects,
    settings: config.presence,
    logger,
    selfId: config.id,
    self: () => ({
      id: config.id,
      role: 'agent',
      identifiers: config.identifiers.text,
      version: VERSION,
      openTunnels: tunnelHost.size,
      draining,
      uptimeMs: Date.now() - startedAt,
      bytesIn: 0,
      bytesOut: 0,
    }),
    onPeerGone: (peer, why) => tunnelHost.closePeer(peer.info.id, `frontend ${peer.info.id} ${why}`),
  });

  const reply = (msg: Msg, tunnelId: string, err?: KnatsError, initialWindow = 0) => {
    metrics.streamPackets.labels('to_frontend', 'DIAL_RSP').inc();
    msg.respond(
      dialResponseCodec.encode({
        protocolVersion: PROTOCOL_VERSION,
        tunnelId,
        agentId: config.id,
        errorCode: err?.code ?? '',
        errorMessage: err?.message ?? '',
        initialWindow,
      }),
    );
  };

  const onDial = async (msg: Msg) => {
    metrics.streamPackets.labels('from_frontend', 'DIAL_REQ').inc();
    let request: BusDialRequest;
    try {
      request = dialRequestCodec.decode(msg.data);
    } catch {
      reply(msg, '', new KnatsError(ErrorCode.MalformedFrame, 'malformed dial request'));
      return;
    }
    const dialLogger = logger.child({
      tunnelId: request.tunnelId,
      frontendId: request.frontendId,
      destination: request.address,
    });
    const fail = (err: KnatsError) => {
      metrics.dialFailures.labels(reasonLabel(err.code)).inc();
      dialLogger.info({ code: err.code, reason: err.message }, 'dial failed');
      reply(msg, request.tunnelId, err);
    };
    if (request.protocolVersion < MIN_PROTOCOL_VERSION) {
      fail(
        new KnatsError(ErrorCode.IncompatiblePeer, `frontend speaks bus protocol ${request.protocolVersion}`),
      );
      return;
    }
    if (draining) {
      fail(new KnatsError(ErrorCode.ShuttingDown, 'agent is draining'));
      return;
    }
    let socket: Socket;
    const started = process.hrtime.bigint();
    pendingDials++;
    try {
      if (request.protocol !== 'tcp') {
        throw new KnatsError(
          ErrorCode.BadAddress,
          `unsupported protocol ${JSON.stringify(request.protocol)}`,
        );
      }
      if (
        !/^[A-Za-z0-9_-]{1,64}$/.test(request.tunnelId) ||
        !/^[A-Za-z0-9_-]{1,128}$/.test(request.frontendId)
      ) {
        throw new KnatsError(ErrorCode.MalformedFrame, 'dial request with an invalid tunnel or frontend id');
      }
      const address = parseDialAddress(request.address);
      const timeout = Math.min(config.dialTimeoutMs, request.dialTimeoutMs || config.dialTimeoutMs);
      socket = await dialTcp(address, timeout, dialAborts.signal);
    } catch (err) {
      fail(isKnatsError(err) ? err : new KnatsError(ErrorCode.DialFailed, String(err)));
      return;
    } finally {
      pendingDials--;
    }
    metrics.dialDuration.observe(Number(process.hrtime.bigint() - started) / 1e9);
    const tunnel = tunnelHost.create(
      request.tunnelId,
      subjects.agentTunnel(config.id, request.tunnelId),
      dialLogger.child({ agentId: config.id }),
    );
    tunnel.open(
      request.frontendId,
      subjects.frontendTunnel(request.frontendId, request.tunnelId),
      request.initialWindow,
    );
    presence.touch(request.frontendId, 'frontend');
    tunnelHost.bindPeer(tunnel, true);
    sockets.add(socket);
    metrics.openEndpointConnections.inc();
    bridgeSocket(tunnel, socket, () => {
      sockets.delete(socket);
      metrics.openEndpointConnections.dec();
    });
    reply(msg, request.tunnelId, undefined, tunnel.initialWindow);
    tunnel.logger.info({ localPort: socket.localPort }, 'tunnel open');
  };

  const dialSubscriptions: Subscription[] = [];
  const subscribeDials = (subject: string, queue?: string) => {
    dialSubscriptions.push(
      nc.subscribe(subject, {
        ...(queue ? { queue } : {}),
        callback: (err, msg) => {
          if (err) logger.error({ err }, 'dial subscription failed');
          else void onDial(msg);
        },
      }),
    );
  };
  subscribeDials(subjects.dialAny(), AGENT_QUEUE);
  subscribeDials(subjects.dialAgent(config.id));
  if (config.identifiers.defaultRoute) subscribeDials(subjects.dialRoute(), AGENT_QUEUE);
  // Make sure the server has our subscriptions before we report ready.
  await nc.flush();
  let subscribed = true;

  const debugState = () => ({
    id: config.id,
    role: 'agent',
    tunnels: tunnelHost.size,
    unconfirmedTunnels: tunnelHost.unconfirmedCount,
    blockedTunnels: tunnelHost.blockedCount,
    sockets: sockets.size,
    pendingDials,
    maxBuffered: tunnelHost.maxBuffered(),
    receiveBudgetInUse: tunnelHost.budget.inUse,
    frontends: presence.count('frontend'),
    draining,
  });
  const notReadyReason = () => {
    if (draining) return 'draining';
    if (nc.isClosed()) return 'NATS connection closed';
    if (!subscribed) return 'not subscribed for dials';
    return undefined;
  };
  const health = await startHealthServer({
    host: config.healthBindAddress,
    port: config.healthPort,
    registry: bus.registry,
    logger,
    notReadyReason,
    debugState,
  });
  const admin = await startHealthServer({
    host: config.adminBindAddress,
    port: config.adminPort,
    registry: bus.registry,
    logger: logger.child({ server: 'admin' }),
    notReadyReason,
    debugState,
  });
  logger.info({ identifiers: config.identifiers.text, version: VERSION }, 'agent ready');

  return {
    id: config.id,
    healthPort: health.port,
    adminPort: admin.port,
    nc,
    debugState,
    async stop({ immediate = false } = {}) {
      if (stopped) return;
      stopped = true;
      draining = true;
      // Leave the queue groups first so no new dial lands here, then tell the fleet.
      for (const sub of dialSubscriptions) sub.unsubscribe();
      subscribed = false;
      presence.beat();
      logger.info({ tunnels: tunnelHost.size, immediate }, 'agent stopping');
      const deadline = Date.now() + (immediate ? 0 : config.gracefulShutdownTimeoutMs);
      while (tunnelHost.size > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
      }
      dialAborts.abort();
      tunnelHost.closeAll(new KnatsError(ErrorCode.ShuttingDown, 'agent stopping'));
      for (const socket of sockets) socket.destroy();
      presence.stop();
      await tunnelHost.stop();
      await Promise.all([health.close(), admin.close()]);
      await nc.drain().catch(() => nc.close());
      logger.info('agent stopped');
    },
  };
}
