/** Watermark strategies. The watermark depends only on the highest timestamp seen, so it is
 * the same however records are split into batches (needed for restart-equivalence). */
import { describeValue, PipelineDefinitionError } from './errors.ts';
import type { Millis } from './time.ts';

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
  if (typeof bound !== 'number' || !Number.isInteger(bound) || bound < 0) {
    throw new PipelineDefinitionError(
      `boundedOutOfOrderness needs a whole number of milliseconds >= 0; received ${describeValue(bound)}`,
    );
  }
  return { bound, idleTimeout: undefined };
}

/** Flink's forMonotonousTimestamps: timestamps never decrease; WM = max ts - 1. */
export function monotonic(): WatermarkStrategy {
  return { bound: 0, idleTimeout: undefined };
}

/** Adds idleness to a strategy (Flink's withIdleness, resolved per shard by processing time). */
export function withIdleness(strategy: WatermarkStrategy, idleTimeout: Millis): WatermarkStrategy {
  if (typeof idleTimeout !== 'number' || !Number.isInteger(idleTimeout) || idleTimeout <= 0) {
    throw new PipelineDefinitionError(
      `withIdleness needs a positive whole number of milliseconds; received ${describeValue(idleTimeout)}`,
    );
  }
  return { ...strategy, idleTimeout };
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
