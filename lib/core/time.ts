import { describeValue, PipelineDefinitionError } from './errors.ts';

/** Event and processing times are epoch milliseconds. Durations are milliseconds. */
export type Millis = number;

/**
 * Event timestamps are whole milliseconds within a JavaScript Date's range (±8.64e15 ms, about
 * ±273,790 years); others go to the dead-letter output. With durations up to MAX_DURATION,
 * every window bound, timer and watermark computed from them stays an exact integer
 * (|t| < 2^53), as Flink's longs are.
 */
export const MAX_EVENT_TIME = 8.64e15;

/** Whether `t` is a time within a Date's range (±MAX_EVENT_TIME ms): not NaN, not ±Infinity. */
export function isEventTime(t: unknown): t is number {
  return typeof t === 'number' && Math.abs(t) <= MAX_EVENT_TIME;
}
/** The longest window, gap, lateness or out-of-orderness bound: 1e14 ms, about 3,170 years. */
export const MAX_DURATION = 1e14;
/**
 * The latest (and, negated, the earliest) timer time: a timestamp plus two durations, as a
 * window's cleanup timer (end - 1 + allowed lateness) is. Still an exact integer below 2^53.
 */
export const MAX_TIMER_TIME = MAX_EVENT_TIME + 2 * MAX_DURATION;

/**
 * Checks a duration option: a whole number of milliseconds from `min` (0 or 1) to
 * MAX_DURATION. `what` names the option in the error.
 */
export function checkDuration(what: string, value: unknown, min: 0 | 1): Millis {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > MAX_DURATION) {
    throw new PipelineDefinitionError(
      `${what} must be a whole number of milliseconds from ${min} to ${MAX_DURATION} (about 3,170 years); received ${describeValue(value)}. Use e.g. minutes(1).`,
    );
  }
  return value;
}

export const milliseconds = (n: number): Millis => n;
export const seconds = (n: number): Millis => n * 1_000;
export const minutes = (n: number): Millis => n * 60_000;
export const hours = (n: number): Millis => n * 3_600_000;
export const days = (n: number): Millis => n * 86_400_000;

/** The watermark before any element was seen (Flink's Long.MIN_VALUE). */
export const MIN_WATERMARK = Number.NEGATIVE_INFINITY;
/** The watermark that closes every window: end of input. */
export const MAX_WATERMARK = Number.POSITIVE_INFINITY;

/** JSON has no infinities: encode them as null / "+inf" so checkpoints round-trip. */
export function encodeTime(t: number): number | string | null {
  if (t === MIN_WATERMARK) return null;
  if (t === MAX_WATERMARK) return '+inf';
  return t;
}

export function decodeTime(v: unknown): number {
  if (v === null || v === undefined) return MIN_WATERMARK;
  if (v === '+inf') return MAX_WATERMARK;
  if (typeof v === 'number') return v;
  throw new TypeError(`expected a time in epoch milliseconds, null or "+inf", received ${String(v)}`);
}
