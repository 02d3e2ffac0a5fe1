/**
 * Where a dial spends its time, stage by stage, for the
 * knats_dial_stage_seconds{door,stage} histogram.
 *
 * The frontend's stages are measured on its own clock, each from the end of
 * the one before. The agent measures its stages on its clock and sends the
 * durations back in the dial response, so no stage compares two processes'
 * clocks: the time the request and the answer spent between the processes
 * (both NATS hops, the server, and waiting in either event loop) is the
 * frontend's round trip minus the agent's own time.
 */
import { performance } from 'node:perf_hooks';

/** The stages in dial order; an agent's stages travel as `stage_micros` in this order (AGENT_STAGES). */
export const DIAL_STAGES = [
  /** The door read and checked the request (gRPC DIAL_REQ, CONNECT header) until the dial started. */
  'door_parse',
  /** Address check and the choice of dial subjects. */
  'route',
  /** Tunnel end registered, request encoded and published (with earlier attempts of a retried dial). */
  'bus_out',
  /** The agent read and checked the request. */
  'agent_receive',
  /** Destination policy and DNS. */
  'agent_policy',
  /** The agent's TCP connect. */
  'agent_connect',
  /** The agent set its tunnel end up and encoded its answer. */
  'agent_answer',
  /** Request and answer in transit: the round trip minus the agent's own time. */
  'bus_transit',
  /** The answer read and checked, the tunnel opened. */
  'bus_back',
  /** The door wrote its answer (DIAL_RSP, or the CONNECT 200). */
  'answer_write',
] as const;
export type DialStage = (typeof DIAL_STAGES)[number];

/** What the agent reports, in this order (DialResponse.stage_micros). */
export const AGENT_STAGES = ['agent_receive', 'agent_policy', 'agent_connect', 'agent_answer'] as const;

/** One dial's stage durations, in seconds. */
export class DialTimeline {
  private last = performance.now();
  readonly durations: [DialStage, number][] = [];

  /** The time since the previous mark (or the start) belongs to `stage`; marks of one stage in a row add up. */
  mark(stage: DialStage): void {
    const now = performance.now();
    const seconds = (now - this.last) / 1000;
    const previous = this.durations[this.durations.length - 1];
    if (previous?.[0] === stage) previous[1] += seconds;
    else this.durations.push([stage, seconds]);
    this.last = now;
  }

  /**
   * The answer arrived: the agent's own stages (microseconds, AGENT_STAGES
   * order) and the transit that remains of the round trip. An agent that
   * reports none (an older build) leaves the whole round trip as transit.
   */
  markAnswer(agentMicros: readonly number[]): void {
    const now = performance.now();
    let agentSeconds = 0;
    for (let i = 0; i < AGENT_STAGES.length && i < agentMicros.length; i++) {
      const seconds = agentMicros[i]! / 1e6;
      agentSeconds += seconds;
      this.durations.push([AGENT_STAGES[i]!, seconds]);
    }
    this.durations.push(['bus_transit', Math.max(0, (now - this.last) / 1000 - agentSeconds)]);
    this.last = now;
  }
}

/**
 * The agent's side: microseconds per AGENT_STAGES stage, each from the end of
 * the one before; `connect` may be entered several times (one per address tried).
 */
export class AgentDialClock {
  private last = performance.now();
  private readonly micros = [0, 0, 0, 0];

  /** The time since the previous lap belongs to AGENT_STAGES[index]. */
  lap(index: 0 | 1 | 2 | 3): void {
    const now = performance.now();
    this.micros[index]! += Math.round((now - this.last) * 1000);
    this.last = now;
  }

  get stageMicros(): number[] {
    return this.micros;
  }
}
