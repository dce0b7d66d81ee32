/** Event and processing times are epoch milliseconds. Durations are milliseconds. */
export type Millis = number;

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
