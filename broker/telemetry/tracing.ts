/**
 * One trace per tunnel, with OpenTelemetry: the frontend's dial (route, bus
 * requests) and the agent's side (policy, TCP connect) and both ends' tunnel
 * life join one trace through the W3C `traceparent` carried in the dial
 * request. OpenTelemetry is imported only when tracing is configured: with no
 * settings every span is the shared no-op below and no module is loaded.
 */
import type * as OtelApi from '@opentelemetry/api';
import { ErrorCode, isKnatsError, KnatsError } from '../errors.js';
import type { Logger } from '../logging.js';
import type { Tunnel } from '../tunnel/tunnel.js';
import { VERSION } from '../version.js';

export interface TracingSettings {
  /** Where spans are POSTed (OTLP/HTTP, JSON encoding): the collector's .../v1/traces. */
  readonly tracesUrl: string;
  /** OTEL_SERVICE_NAME; default knats-<role>. */
  readonly serviceName?: string;
}

export type SpanAttributes = Record<string, string | number | boolean>;

export type SpanKind = 'internal' | 'client' | 'server';

export interface TraceSpan {
  /** W3C traceparent naming this span, for a request to a peer; undefined when not tracing. */
  readonly traceparent: string | undefined;
  child(name: string, attributes?: SpanAttributes, kind?: SpanKind): TraceSpan;
  set(attributes: SpanAttributes): void;
  /** Ends the span; an error marks it failed with its stable code. */
  end(err?: unknown): void;
}

export interface Tracing {
  /** A span under the peer's `traceparent` when one is given and valid, else a new trace. */
  start(name: string, attributes?: SpanAttributes, options?: { parent?: string; kind?: SpanKind }): TraceSpan;
  /** `span` ends when the tunnel does (tunnelEnded), with its bytes and close reason. */
  bindTunnel(tunnel: Tunnel, span: TraceSpan): void;
  /** Called for every ended tunnel (the tunnel host's onTunnelEnded). */
  tunnelEnded(tunnel: Tunnel, err: KnatsError | undefined): void;
  /** Exports what is still buffered. */
  shutdown(): Promise<void>;
}

const noSpan: TraceSpan = {
  traceparent: undefined,
  child: () => noSpan,
  set: () => {},
  end: () => {},
};

export const noTracing: Tracing = {
  start: () => noSpan,
  bindTunnel: () => {},
  tunnelEnded: () => {},
  shutdown: async () => {},
};

/**
 * The tracing settings from `--otlp-endpoint` (a collector's base URL, as
 * OTEL_EXPORTER_OTLP_ENDPOINT) and the standard OTEL_* variables of `env`;
 * undefined (no tracing) when none names an endpoint or OTEL_SDK_DISABLED is
 * true. Called by the CLI; components get the result.
 */
export function tracingSettings(
  endpointFlag: string | undefined,
  env: NodeJS.ProcessEnv,
): TracingSettings | undefined {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return undefined;
  const serviceName = env.OTEL_SERVICE_NAME?.trim() || undefined;
  const base = (from: string, url: string) => `${checkedUrl(from, url).replace(/\/+$/, '')}/v1/traces`;
  if (endpointFlag) return { tracesUrl: base('--otlp-endpoint', endpointFlag), serviceName };
  const tracesEndpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (tracesEndpoint || env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim()) assertHttpProtocol(env);
  if (tracesEndpoint) {
    return { tracesUrl: checkedUrl('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', tracesEndpoint), serviceName };
  }
  const endpoint = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  if (endpoint) return { tracesUrl: base('OTEL_EXPORTER_OTLP_ENDPOINT', endpoint), serviceName };
  return undefined;
}

/**
 * The OTLP protocol the OTEL_* variables ask for is one this exporter speaks:
 * spans go over HTTP (JSON), which a collector takes on its OTLP/HTTP port
 * whether it was told http/protobuf or http/json; an endpoint meant for gRPC
 * (usually port 4317) would refuse every export, so it is a bad setting now.
 */
function assertHttpProtocol(env: NodeJS.ProcessEnv): void {
  for (const name of ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL'] as const) {
    const protocol = env[name]?.trim();
    if (!protocol) continue;
    if (protocol === 'http/protobuf' || protocol === 'http/json') return;
    throw new KnatsError(
      ErrorCode.BadConfig,
      `${name}=${protocol}: knats exports traces over OTLP/HTTP only; point the endpoint at the collector's OTLP/HTTP port (usually 4318) and set http/protobuf or http/json`,
    );
  }
}

function checkedUrl(from: string, text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new KnatsError(ErrorCode.BadConfig, `${from}: ${JSON.stringify(text)} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new KnatsError(ErrorCode.BadConfig, `${from}: OTLP/HTTP needs an http:// or https:// URL`);
  }
  return text;
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The span context a peer's traceparent names; undefined when it is absent or malformed. */
export function parseTraceparent(
  text: string | undefined,
): { traceId: string; spanId: string; traceFlags: number } | undefined {
  const match = text ? TRACEPARENT.exec(text) : null;
  if (!match) return undefined;
  const [, traceId, spanId, flags] = match as unknown as [string, string, string, string];
  // All-zero ids are invalid by the W3C spec.
  if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined;
  return { traceId, spanId, traceFlags: Number.parseInt(flags, 16) };
}

export function formatTraceparent(context: { traceId: string; spanId: string; traceFlags: number }): string {
  return `00-${context.traceId}-${context.spanId}-${(context.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

/**
 * The tracing of one component: a no-op without settings; otherwise its own
 * tracer provider (not the global one, so a frontend and an agent in one
 * process keep their service names) exporting in batches over OTLP/HTTP.
 */
export async function startTracing(
  settings: TracingSettings | undefined,
  identity: { readonly role: 'frontend' | 'agent'; readonly id: string },
  logger: Logger,
): Promise<Tracing> {
  if (!settings) return noTracing;
  const [api, sdk, otlp, resources, semconv] = await Promise.all([
    import('@opentelemetry/api'),
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/semantic-conventions'),
  ]);
  const exportFailed = (message: string, ...args: unknown[]) =>
    logger.warn(
      { code: ErrorCode.TraceExport, reason: [message, ...args.map(describe)].join(' ') },
      'trace export failed',
    );
  // OpenTelemetry reports export failures through its global diagnostic logger: one coded line each.
  // Without suppressOverrideMessage a second component in the process (demo, tests) logs a stack trace.
  api.diag.setLogger(
    { error: exportFailed, warn: exportFailed, info: () => {}, debug: () => {}, verbose: () => {} },
    { logLevel: api.DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
  const provider = new sdk.BasicTracerProvider({
    resource: resources.resourceFromAttributes({
      [semconv.ATTR_SERVICE_NAME]: settings.serviceName ?? `knats-${identity.role}`,
      [semconv.ATTR_SERVICE_VERSION]: VERSION,
      'service.instance.id': identity.id,
    }),
    spanProcessors: [new sdk.BatchSpanProcessor(new otlp.OTLPTraceExporter({ url: settings.tracesUrl }))],
  });
  const tracer = provider.getTracer('konnectivity-nats', VERSION);
  const kinds: Record<SpanKind, OtelApi.SpanKind> = {
    internal: api.SpanKind.INTERNAL,
    client: api.SpanKind.CLIENT,
    server: api.SpanKind.SERVER,
  };
  const wrap = (span: OtelApi.Span): TraceSpan => ({
    traceparent: formatTraceparent(span.spanContext()),
    child: (name, attributes, kind = 'internal') =>
      wrap(
        tracer.startSpan(name, { kind: kinds[kind], attributes }, api.trace.setSpan(api.ROOT_CONTEXT, span)),
      ),
    set: (attributes) => span.setAttributes(attributes),
    end: (err) => {
      if (err !== undefined) {
        const code = isKnatsError(err) ? err.code : ErrorCode.DialFailed;
        span.setAttribute('knats.error.code', code);
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: describe(err) });
      }
      span.end();
    },
  });
  const tunnelSpans = new WeakMap<Tunnel, TraceSpan>();
  logger.info({ tracesUrl: settings.tracesUrl }, 'exporting traces over OTLP/HTTP');
  return {
    start(name, attributes, options = {}) {
      const parent = parseTraceparent(options.parent);
      const context = parent
        ? api.trace.setSpanContext(api.ROOT_CONTEXT, { ...parent, isRemote: true })
        : api.ROOT_CONTEXT;
      return wrap(tracer.startSpan(name, { kind: kinds[options.kind ?? 'internal'], attributes }, context));
    },
    bindTunnel: (tunnel, span) => tunnelSpans.set(tunnel, span),
    tunnelEnded(tunnel, err) {
      const span = tunnelSpans.get(tunnel);
      if (!span) return;
      tunnelSpans.delete(tunnel);
      span.set({
        'knats.tunnel.bytes_in': tunnel.bytesIn,
        'knats.tunnel.bytes_out': tunnel.bytesOut,
        'knats.tunnel.close_reason': err?.code ?? 'ok',
      });
      span.end(err);
    },
    async shutdown() {
      // A collector that is down would hold the stop for the exporter's retries (about 10 s).
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => {
        timer = setTimeout(() => resolve('late'), SHUTDOWN_EXPORT_MS).unref();
      });
      const flushed = provider.shutdown().catch((err: unknown) => exportFailed('shutdown:', describe(err)));
      if ((await Promise.race([flushed, late])) === 'late') {
        exportFailed(
          `spans still buffered not exported within ${SHUTDOWN_EXPORT_MS} ms of stopping; dropped`,
        );
      }
      clearTimeout(timer);
    },
  };
}

/** How long stopping waits for the last spans to reach the collector. */
const SHUTDOWN_EXPORT_MS = 2000;

function describe(value: unknown): string {
  return value instanceof Error ? value.message : String(value);
}

/** `work`, with `span` ended when it settles (failed when it rejects; with `result`'s attributes when not). */
export function traced<T>(
  span: TraceSpan,
  work: Promise<T>,
  result?: (value: T) => SpanAttributes,
): Promise<T> {
  return work.then(
    (value) => {
      if (result) span.set(result(value));
      span.end();
      return value;
    },
    (err: unknown) => {
      span.end(err);
      throw err;
    },
  );
}
