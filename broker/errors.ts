/**
 * One catalogue of typed errors with stable codes. Codes never change meaning;
 * logs, metrics labels and tests match on them. The mapping to upstream's
 * DIAL_RSP texts and HTTP CONNECT status codes lives here too, in one table.
 */

export const ErrorCode = {
  /** No agent answered the dial subject (NATS no-responders, or no strategy matched). */
  NoAgent: 'KNATS_NO_AGENT',
  /** The destination actively refused the connection (ECONNREFUSED). */
  DialRefused: 'KNATS_DIAL_REFUSED',
  /** The destination is unreachable (EHOSTUNREACH, ENETUNREACH). */
  DialUnreachable: 'KNATS_DIAL_UNREACHABLE',
  /** The destination name did not resolve. */
  DialDns: 'KNATS_DIAL_DNS',
  /** The agent's TCP dial did not complete in time, or the agent did not answer in time. */
  DialTimeout: 'KNATS_DIAL_TIMEOUT',
  /** The agent is out of file descriptors (EMFILE/ENFILE). */
  AgentOutOfFds: 'KNATS_AGENT_OUT_OF_FDS',
  /** The agent's destination policy forbids the address. */
  DestinationDenied: 'KNATS_DESTINATION_DENIED',
  /** The dial request itself is malformed (bad address, bad port, unknown protocol). */
  BadAddress: 'KNATS_BAD_ADDRESS',
  /** Any other dial failure on the agent. */
  DialFailed: 'KNATS_DIAL_FAILED',
  /** The client cancelled a dial (DIAL_CLS) before it completed. */
  DialCancelled: 'KNATS_DIAL_CANCELLED',
  /** Too many dials pending on one stream or one process. */
  TooManyPendingDials: 'KNATS_TOO_MANY_PENDING_DIALS',
  /** The peer speaks a protocol version we cannot serve. */
  IncompatiblePeer: 'KNATS_INCOMPATIBLE_PEER',
  /** A frame arrived out of sequence: frames were lost, so the tunnel cannot be byte-exact. */
  SequenceGap: 'KNATS_SEQUENCE_GAP',
  /** A peer sent more bytes than it was granted. */
  CreditViolation: 'KNATS_CREDIT_VIOLATION',
  /** A frame could not be decoded. */
  MalformedFrame: 'KNATS_MALFORMED_FRAME',
  /** A socket at one end of an open tunnel was reset or failed: the tunnel is aborted, not ended. */
  ConnectionReset: 'KNATS_CONNECTION_RESET',
  /** The peer process stopped heartbeating or no longer knows the tunnel. */
  PeerGone: 'KNATS_PEER_GONE',
  /** Bytes waited to move in a tunnel and none moved either way for --stalled-tunnel-timeout: aborted on both ends. */
  TunnelStalled: 'KNATS_TUNNEL_STALLED',
  /** The dial succeeded on the agent but the frontend never confirmed it. */
  ConfirmTimeout: 'KNATS_CONFIRM_TIMEOUT',
  /** Our own NATS connection was lost for longer than the liveness window. */
  BusLost: 'KNATS_BUS_LOST',
  /** This process is not connected to NATS now (never yet, or reconnecting): dials fail at once. */
  BusUnavailable: 'KNATS_BUS_UNAVAILABLE',
  /** The NATS server refuses a subscription or publish this role needs. */
  BusPermission: 'KNATS_BUS_PERMISSION',
  /** A secret file (seed, creds, password, token) is readable by group or others. */
  SecretFileMode: 'KNATS_SECRET_FILE_MODE',
  /** This nats.js lacks the internals the vectored flush relies on: the connection keeps nats.js's own (slower) flush. */
  NatsClientInternals: 'KNATS_NATS_CLIENT_INTERNALS',
  /** The process is shutting down. */
  ShuttingDown: 'KNATS_SHUTTING_DOWN',
  /** A peer's bus message (dial reply, heartbeat, dial request) with a bad or mismatching field: that message is dropped. */
  BadPeerMessage: 'KNATS_BAD_PEER_MESSAGE',
  /** A client's partially received messages or headers went over its door's buffer budget (per connection or per process). */
  DoorBudgetExhausted: 'KNATS_DOOR_BUDGET_EXHAUSTED',
  /** A malformed packet from the konnectivity client. */
  BadPacket: 'KNATS_BAD_PACKET',
  /** An upstream Konnectivity flag with no meaning on a bus: accepted without effect; the warning names what replaces it. */
  UpstreamFlagReplaced: 'KNATS_UPSTREAM_FLAG_REPLACED',
  /** Bad configuration (flags, environment). */
  BadConfig: 'KNATS_BAD_CONFIG',
  /** nats-server could not be found or started. */
  NatsServer: 'KNATS_NATS_SERVER',
  /** A frontend worker of `--workers N` exited (crashed or killed); its tunnels ended with it and it is restarted. */
  WorkerExited: 'KNATS_WORKER_EXITED',
  /** Spans could not be exported to the OTLP collector (tracing only; tunnels are unaffected). */
  TraceExport: 'KNATS_TRACE_EXPORT',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class KnatsError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KnatsError';
    this.code = code;
  }
}

export function isKnatsError(err: unknown): err is KnatsError {
  return err instanceof KnatsError;
}

interface ErrorPresentation {
  /** HTTP status for the CONNECT door. */
  readonly httpStatus: number;
  /** Label for `dial_failure_count{reason}` / `endpoint_dial_failure_total{reason}`. */
  readonly reason: string;
}

const presentationTable: Record<ErrorCode, ErrorPresentation> = {
  KNATS_NO_AGENT: { httpStatus: 500, reason: 'no_agent' },
  KNATS_DIAL_REFUSED: { httpStatus: 502, reason: 'refused' },
  KNATS_DIAL_UNREACHABLE: { httpStatus: 502, reason: 'unreachable' },
  KNATS_DIAL_DNS: { httpStatus: 502, reason: 'dns' },
  KNATS_DIAL_TIMEOUT: { httpStatus: 504, reason: 'backend_dial_timeout' },
  KNATS_AGENT_OUT_OF_FDS: { httpStatus: 503, reason: 'out_of_fds' },
  KNATS_DESTINATION_DENIED: { httpStatus: 403, reason: 'denied' },
  KNATS_BAD_ADDRESS: { httpStatus: 400, reason: 'bad_address' },
  KNATS_DIAL_FAILED: { httpStatus: 502, reason: 'error_response' },
  KNATS_DIAL_CANCELLED: { httpStatus: 502, reason: 'frontend_close' },
  KNATS_TOO_MANY_PENDING_DIALS: { httpStatus: 503, reason: 'too_many_pending' },
  KNATS_INCOMPATIBLE_PEER: { httpStatus: 502, reason: 'incompatible_peer' },
  KNATS_SEQUENCE_GAP: { httpStatus: 502, reason: 'sequence_gap' },
  KNATS_CREDIT_VIOLATION: { httpStatus: 502, reason: 'credit_violation' },
  KNATS_MALFORMED_FRAME: { httpStatus: 502, reason: 'malformed_frame' },
  KNATS_CONNECTION_RESET: { httpStatus: 502, reason: 'connection_reset' },
  KNATS_PEER_GONE: { httpStatus: 502, reason: 'peer_gone' },
  KNATS_CONFIRM_TIMEOUT: { httpStatus: 504, reason: 'confirm_timeout' },
  KNATS_TUNNEL_STALLED: { httpStatus: 504, reason: 'tunnel_stalled' },
  KNATS_BUS_LOST: { httpStatus: 503, reason: 'bus_lost' },
  KNATS_BUS_UNAVAILABLE: { httpStatus: 503, reason: 'bus_unavailable' },
  KNATS_BUS_PERMISSION: { httpStatus: 503, reason: 'bus_permission' },
  KNATS_SECRET_FILE_MODE: { httpStatus: 500, reason: 'secret_file_mode' },
  KNATS_UPSTREAM_FLAG_REPLACED: { httpStatus: 500, reason: 'upstream_flag_replaced' },
  KNATS_NATS_CLIENT_INTERNALS: { httpStatus: 500, reason: 'nats_client_internals' },
  KNATS_SHUTTING_DOWN: { httpStatus: 503, reason: 'shutting_down' },
  KNATS_BAD_PEER_MESSAGE: { httpStatus: 502, reason: 'bad_peer_message' },
  KNATS_DOOR_BUDGET_EXHAUSTED: { httpStatus: 503, reason: 'door_budget_exhausted' },
  KNATS_BAD_PACKET: { httpStatus: 400, reason: 'bad_packet' },
  KNATS_BAD_CONFIG: { httpStatus: 500, reason: 'bad_config' },
  KNATS_NATS_SERVER: { httpStatus: 500, reason: 'nats_server' },
  KNATS_TRACE_EXPORT: { httpStatus: 500, reason: 'trace_export' },
  KNATS_WORKER_EXITED: { httpStatus: 503, reason: 'worker_exited' },
};

/** A Map, not the object: a code from a peer must never reach Object.prototype ('constructor', '__proto__'). */
const presentation = new Map(Object.entries(presentationTable)) as ReadonlyMap<ErrorCode, ErrorPresentation>;

/** Total even for a value that only claims to be an ErrorCode: the generic DialFailed row. */
function presentationOf(code: ErrorCode): ErrorPresentation {
  return presentation.get(code) ?? presentationTable[ErrorCode.DialFailed];
}

export function httpStatusFor(code: ErrorCode): number {
  return presentationOf(code).httpStatus;
}

/** Our reason label for a code: `knats_dial_failures_total{reason}` and `knats_tunnels_closed_total`. */
export function reasonLabel(code: ErrorCode): string {
  return presentationOf(code).reason;
}

/**
 * Upstream proxy-server's `dial_failure_count{reason}` value for a code, so
 * dashboards and alerts written for upstream keep matching: an agent that
 * answered with an error is `error_response`, whatever the error.
 */
export function upstreamServerDialReason(code: ErrorCode): string {
  switch (code) {
    case ErrorCode.NoAgent:
    case ErrorCode.BusUnavailable:
    case ErrorCode.BusLost:
    case ErrorCode.BusPermission:
      return 'no_agent';
    case ErrorCode.DialTimeout:
    case ErrorCode.ConfirmTimeout:
      return 'backend_dial_timeout';
    case ErrorCode.DialCancelled:
      return 'frontend_close';
    case ErrorCode.PeerGone:
      return 'backend_close';
    case ErrorCode.BadPeerMessage:
    case ErrorCode.IncompatiblePeer:
    case ErrorCode.MalformedFrame:
      return 'unrecognized_response';
    default:
      return 'error_response';
  }
}

/** Upstream proxy-agent's `endpoint_dial_failure_total{reason}`: `timeout` or `unknown`. */
export function upstreamAgentDialReason(code: ErrorCode): string {
  return code === ErrorCode.DialTimeout ? 'timeout' : 'unknown';
}

/** Codes carried over the bus are validated: an unknown code from a newer peer becomes DialFailed. */
export function parseErrorCode(value: string): ErrorCode {
  return presentation.has(value as ErrorCode) ? (value as ErrorCode) : ErrorCode.DialFailed;
}

/** The most of a peer's error message passed on to a client, a log line or a metric. */
export const MAX_PEER_MESSAGE_BYTES = 1024;

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/g;

/**
 * `text` cut to `max` UTF-8 bytes (marked when cut), its control characters
 * written as \xNN so no terminal escape or forged log line passes through.
 */
function bounded(text: string, max = MAX_PEER_MESSAGE_BYTES): string {
  const bytes = Buffer.byteLength(text);
  const cut =
    bytes <= max
      ? text
      : `${Buffer.from(text).subarray(0, max).toString()}... (${bytes - max} more bytes cut)`;
  return cut.replace(CONTROL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/**
 * The error a peer (agent or frontend) reported over the bus, made safe to
 * pass on: an unknown code becomes DialFailed and the message is bounded
 * (MAX_PEER_MESSAGE_BYTES, control characters escaped). Every error built
 * from a peer's code and message goes through here.
 */
export function errorFromPeer(code: string, message: string): KnatsError {
  const safeCode = parseErrorCode(code);
  return new KnatsError(safeCode, bounded(message || safeCode));
}

/**
 * The DIAL_RSP error text the konnectivity client sees. The no-agent text is
 * upstream's verbatim, because operators grep for it. The message is bounded
 * here too, whatever built the error.
 */
export function dialResponseText(err: KnatsError): string {
  if (err.code === ErrorCode.NoAgent) return 'No agent available';
  return `${err.code}: ${bounded(err.message)}`;
}
