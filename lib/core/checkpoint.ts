/** The per-shard checkpoint: where a shard is, its event time, and its pending timers. */
import { StateFormatError } from './errors.ts';
import { decodeTime, encodeTime } from './time.ts';

export const CHECKPOINT_FORMAT = 1;

export type TimeDomain = 'event' | 'processing';
export type TimerNamespace = string | number;

/** A pending timer. Timers belong to a shard; their state lives in keyed state. */
export interface TimerSpec {
  readonly operator: string;
  readonly domain: TimeDomain;
  readonly time: number;
  readonly key: string | number;
  readonly namespace: TimerNamespace;
}

export interface ShardCheckpoint {
  readonly shardId: string;
  /** Sequence number of the last record whose effects are committed, if any. */
  readonly position: string | undefined;
  /** Number of commits so far; output ids include it. */
  readonly commitNumber: number;
  /** Current watermark (MIN_WATERMARK before the first element). */
  readonly watermark: number;
  /** Highest element timestamp seen by the watermark generator. */
  readonly maxTimestamp: number;
  /** Highest arrival time of the records processed so far, for idleness. */
  readonly lastRecordAt: number | undefined;
  readonly timers: readonly TimerSpec[];
  /** True once the shard was read to its end (closed by a reshard). */
  readonly finished: boolean;
}

export function initialCheckpoint(shardId: string): ShardCheckpoint {
  return {
    shardId,
    position: undefined,
    commitNumber: 0,
    watermark: Number.NEGATIVE_INFINITY,
    maxTimestamp: Number.NEGATIVE_INFINITY,
    lastRecordAt: undefined,
    timers: [],
    finished: false,
  };
}

/** JSON form: infinities encoded, timers as compact tuples. */
export function serializeCheckpoint(c: ShardCheckpoint): string {
  return JSON.stringify({
    v: CHECKPOINT_FORMAT,
    shardId: c.shardId,
    position: c.position ?? null,
    commitNumber: c.commitNumber,
    watermark: encodeTime(c.watermark),
    maxTimestamp: encodeTime(c.maxTimestamp),
    lastRecordAt: c.lastRecordAt ?? null,
    finished: c.finished,
    timers: c.timers.map((t) => [
      t.operator,
      t.domain === 'event' ? 'e' : 'p',
      encodeTime(t.time),
      t.key,
      t.namespace,
    ]),
  });
}

export function deserializeCheckpoint(text: string): ShardCheckpoint {
  const fail = (what: string): never => {
    throw new StateFormatError(`checkpoint is corrupted: ${what}; received ${text.slice(0, 80)}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new StateFormatError(
      `checkpoint is not valid JSON (${String(error)}); received ${text.slice(0, 80)}`,
    );
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return fail('not a JSON object');
  const o = raw as Record<string, unknown>;
  if (o.v !== CHECKPOINT_FORMAT) {
    throw new StateFormatError(
      `checkpoint format ${String(o.v)} is not supported (this floe reads format ${CHECKPOINT_FORMAT}); restore from a savepoint written by a compatible version`,
    );
  }
  if (typeof o.shardId !== 'string') fail('"shardId" is not a string');
  if (o.position !== null && typeof o.position !== 'string') fail('"position" is not a string or null');
  if (typeof o.commitNumber !== 'number' || !Number.isInteger(o.commitNumber))
    fail('"commitNumber" is not an integer');
  if (o.lastRecordAt !== null && typeof o.lastRecordAt !== 'number')
    fail('"lastRecordAt" is not a number or null');
  if (!Array.isArray(o.timers)) fail('"timers" is not an array');
  const time = (v: unknown, field: string): number => {
    try {
      return decodeTime(v);
    } catch {
      return fail(`${field} is not a time`);
    }
  };
  const timers = (o.timers as unknown[]).map((t, i) => {
    if (!Array.isArray(t) || t.length !== 5 || typeof t[0] !== 'string' || (t[1] !== 'e' && t[1] !== 'p')) {
      return fail(`timer ${i} is malformed`);
    }
    return {
      operator: t[0] as string,
      domain: t[1] === 'e' ? ('event' as const) : ('processing' as const),
      time: time(t[2], `timer ${i} time`),
      key: t[3] as string | number,
      namespace: t[4] as TimerNamespace,
    };
  });
  return {
    shardId: o.shardId as string,
    position: (o.position as string | null) ?? undefined,
    commitNumber: o.commitNumber as number,
    watermark: time(o.watermark, '"watermark"'),
    maxTimestamp: time(o.maxTimestamp, '"maxTimestamp"'),
    lastRecordAt: (o.lastRecordAt as number | null) ?? undefined,
    finished: o.finished === true,
    timers,
  };
}

/** Compares Kinesis-style decimal sequence numbers without losing precision. */
export function compareSequenceNumbers(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}
