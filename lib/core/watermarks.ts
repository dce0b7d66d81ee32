/** Watermark strategies. The watermark depends only on the highest timestamp seen, so it is
 * the same however records are split into batches (needed for restart-equivalence). */
import { checkDuration, type Millis } from './time.ts';

export interface WatermarkStrategy {
  /** Tolerated out-of-orderness: WM = max ts - bound - 1. Monotonic is bound 0. */
  readonly bound: Millis;
  /**
   * After this much processing time without records (measured between record arrival times,
   * or to the current time while the reader is caught up), the watermark advances with
   * processing time (from max ts - bound - 1, one millisecond per millisecond) so final
   * windows fire.
   */
  readonly idleTimeout: Millis | undefined;
}

/** Flink's forBoundedOutOfOrderness: WM = max ts - bound - 1. */
export function boundedOutOfOrderness(bound: Millis): WatermarkStrategy {
  return { bound: checkDuration('boundedOutOfOrderness bound', bound, 0), idleTimeout: undefined };
}

/** Flink's forMonotonousTimestamps: timestamps never decrease; WM = max ts - 1. */
export function monotonic(): WatermarkStrategy {
  return { bound: 0, idleTimeout: undefined };
}

/**
 * Adds idleness to a strategy. Flink's withIdleness marks an idle source so downstream
 * operators ignore it; a floe shard has no downstream to merge into, so once it has had no
 * records for `idleTimeout` of processing time its own watermark advances with processing time
 * and its last windows fire.
 */
export function withIdleness(strategy: WatermarkStrategy, idleTimeout: Millis): WatermarkStrategy {
  return { ...strategy, idleTimeout: checkDuration('withIdleness timeout', idleTimeout, 1) };
}

/** The watermark generated from the highest timestamp seen. */
export function generatedWatermark(strategy: WatermarkStrategy, maxTimestamp: number): number {
  return maxTimestamp - strategy.bound - 1;
}

/** The watermark an idle shard may advance to at processing time `now`, or -Infinity. */
export function idleWatermark(
  strategy: WatermarkStrategy,
  maxTimestamp: number,
  lastRecordAt: number | undefined,
  now: number,
): number {
  if (strategy.idleTimeout === undefined || lastRecordAt === undefined) return Number.NEGATIVE_INFINITY;
  if (maxTimestamp === Number.NEGATIVE_INFINITY) return Number.NEGATIVE_INFINITY;
  const idleFor = now - lastRecordAt - strategy.idleTimeout;
  if (idleFor <= 0) return Number.NEGATIVE_INFINITY;
  return generatedWatermark(strategy, maxTimestamp) + idleFor;
}
