/**
 * Routing strategies: which dial subject(s) to try, in order, for one dial.
 * Pure over the strategies configured and the address; the fleet is only
 * consulted through NATS itself (queue groups answer "no responders" when
 * nobody is subscribed), so a fresh frontend routes correctly at once.
 */
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { Subjects } from '../broker/subjects.js';

export const STRATEGIES = ['default', 'destHost', 'defaultRoute'] as const;
export type ProxyStrategy = (typeof STRATEGIES)[number];

export function parseStrategies(value: string): ProxyStrategy[] {
  const list = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (list.length === 0) throw new KnatsError(ErrorCode.BadConfig, '--proxy-strategies: empty list');
  for (const s of list) {
    if (!(STRATEGIES as readonly string[]).includes(s)) {
      throw new KnatsError(
        ErrorCode.BadConfig,
        `--proxy-strategies: unknown strategy ${JSON.stringify(s)} (known: ${STRATEGIES.join(', ')})`,
      );
    }
  }
  return list as ProxyStrategy[];
}

export interface DialTarget {
  readonly strategy: ProxyStrategy;
  readonly subject: string;
}

/**
 * The subjects to try in order. `destHost` maps to the per-agent subject of
 * the agents whose identifiers match; with no presence data yet it is skipped.
 */
export function dialTargets(
  strategies: readonly ProxyStrategy[],
  subjects: Subjects,
  agentsForHost: (host: string) => readonly string[],
  host: string,
): DialTarget[] {
  const targets: DialTarget[] = [];
  for (const strategy of strategies) {
    switch (strategy) {
      case 'destHost':
        for (const agentId of agentsForHost(host)) {
          targets.push({ strategy, subject: subjects.dialAgent(agentId) });
        }
        break;
      case 'defaultRoute':
        targets.push({ strategy, subject: subjects.dialRoute() });
        break;
      case 'default':
        targets.push({ strategy, subject: subjects.dialAny() });
        break;
    }
  }
  return targets;
}
