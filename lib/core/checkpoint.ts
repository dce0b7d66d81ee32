/** The per-shard checkpoint: where a shard is, its event time, and its pending timers. */
import { StateFormatError } from './errors.ts';
import { decodeTime, encodeTime } from './time.ts';

/**
 * 2 added the timer log; format 1 checkpoints (all timers inline) are still read. 3: a session
 * window's pending timer may be an alarm before its session's end (window-operator.ts), which
 * earlier versions would not move on; the encoding is format 2's, so they must refuse it.
 */
export const CHECKPOINT_FORMAT = 3;
export const READABLE_CHECKPOINT_FORMATS: readonly number[] = [1, 2, 3];

/** The readable formats, for messages: "1, 2 and 3". */
export function readableCheckpointFormats(): string {
  const all = READABLE_CHECKPOINT_FORMATS.map(String);
  return all.length < 2 ? all.join('') : `${all.slice(0, -1).join(', ')} and ${all.at(-1)}`;
}

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
  /**
   * Timers held in the checkpoint itself. Without a timer log, every pending timer; with one,
   * only those at or before the time they would have fired by (registered "in the past", they
   * fire at the next advance), which the log cannot hold.
   */
  readonly timers: readonly TimerSpec[];
  /** Where the other pending timers are: keyed-state chunks plus a short inline tail (timer-log.ts). */
  readonly timerLog?: TimerLogCheckpoint;
  /** True once the shard was read to its end (closed by a reshard). */
  readonly finished: boolean;
  /**
   * Reshards between the stream's first shards and this one: one more than its deepest parent's,
   * absent (0) for a shard without parents. A key's successive owners are each other's
   * descendants, so a deeper writer of a key is always the newer one; backends whose writes can
   * land late compare it (docs/protocol.md).
   */
  readonly depth?: number;
}

/** The lineage depth of a checkpoint's shard (0 without parents). */
export const depthOf = (c: ShardCheckpoint): number => c.depth ?? 0;

/** A registration (add) or deletion of a timer, as the timer log records it. */
export interface TimerOp {
  readonly add: boolean;
  readonly timer: TimerSpec;
}

/** An immutable chunk of timer ops, stored as a keyed-state entry at `address`. */
export interface TimerChunkRef {
  readonly address: string;
  /** Number of ops in the chunk. */
  readonly ops: number;
  /** Latest event time of an op in the chunk (-Infinity if none): once fired through, it is dead. */
  readonly maxEventTime: number;
  /** Latest processing time of an op in the chunk (-Infinity if none). */
  readonly maxProcessingTime: number;
}

/**
 * The timer log of a shard: every timer later than what has fired, as the ordered ops of its
 * chunks and then of its tail. An op whose time has been fired through is dead: the watermark
 * for event time, `processingFiredThrough` for processing time.
 */
export interface TimerLogCheckpoint {
  readonly chunks: readonly TimerChunkRef[];
  readonly tail: readonly TimerOp[];
  /** Processing time up to which every processing-time timer has fired. */
  readonly processingFiredThrough: number;
  /** Sequence number of the next chunk (chunk addresses are never reused). */
  readonly nextChunk: number;
  /** Number of pending timers (log and inline), for status displays. */
  readonly pending: number;
}

/** Number of pending timers of a checkpoint (inline and in its timer log). */
export function pendingTimerCount(c: ShardCheckpoint): number {
  return c.timerLog === undefined ? c.timers.length : c.timerLog.pending;
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
    ...(depthOf(c) === 0 ? {} : { depth: c.depth }),
    timers: c.timers.map(timerTuple),
    ...(c.timerLog === undefined
      ? {}
      : {
          timerLog: {
            chunks: c.timerLog.chunks.map((r) => [
              r.address,
              r.ops,
              encodeTime(r.maxEventTime),
              encodeTime(r.maxProcessingTime),
            ]),
            tail: c.timerLog.tail.map((o) => [o.add ? 1 : 0, ...timerTuple(o.timer)]),
            processingFiredThrough: encodeTime(c.timerLog.processingFiredThrough),
            nextChunk: c.timerLog.nextChunk,
            pending: c.timerLog.pending,
          },
        }),
  });
}

function timerTuple(
  t: TimerSpec,
): [string, 'e' | 'p', number | string | null, string | number, TimerNamespace] {
  return [t.operator, t.domain === 'event' ? 'e' : 'p', encodeTime(t.time), t.key, t.namespace];
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
  if (!READABLE_CHECKPOINT_FORMATS.includes(o.v as number)) {
    throw new StateFormatError(
      `checkpoint format ${String(o.v)} is not supported (this floe reads formats ${readableCheckpointFormats()}); restore from a savepoint written by a compatible version`,
    );
  }
  if (typeof o.shardId !== 'string') fail('"shardId" is not a string');
  if (o.position !== null && typeof o.position !== 'string') fail('"position" is not a string or null');
  if (typeof o.commitNumber !== 'number' || !Number.isInteger(o.commitNumber))
    fail('"commitNumber" is not an integer');
  if (o.lastRecordAt !== null && typeof o.lastRecordAt !== 'number')
    fail('"lastRecordAt" is not a number or null');
  if (!Array.isArray(o.timers)) fail('"timers" is not an array');
  if (o.depth !== undefined && !(Number.isInteger(o.depth) && (o.depth as number) > 0))
    fail('"depth" is not a positive integer');
  const time = (v: unknown, field: string): number => {
    try {
      return decodeTime(v);
    } catch {
      return fail(`${field} is not a time`);
    }
  };
  const timer = (t: unknown[], what: string): TimerSpec => {
    if (t.length !== 5 || typeof t[0] !== 'string' || (t[1] !== 'e' && t[1] !== 'p')) {
      return fail(`${what} is malformed`);
    }
    return {
      operator: t[0] as string,
      domain: t[1] === 'e' ? ('event' as const) : ('processing' as const),
      time: time(t[2], `${what} time`),
      key: t[3] as string | number,
      namespace: t[4] as TimerNamespace,
    };
  };
  const timers = (o.timers as unknown[]).map((t, i) =>
    Array.isArray(t) ? timer(t, `timer ${i}`) : fail(`timer ${i} is malformed`),
  );
  let timerLog: TimerLogCheckpoint | undefined;
  if (o.timerLog !== undefined) {
    const l = o.timerLog as Record<string, unknown>;
    if (typeof l !== 'object' || l === null || !Array.isArray(l.chunks) || !Array.isArray(l.tail))
      fail('"timerLog" is malformed');
    if (typeof l.nextChunk !== 'number' || typeof l.pending !== 'number')
      fail('"timerLog" counters are malformed');
    timerLog = {
      chunks: (l.chunks as unknown[]).map((c, i) => {
        if (!Array.isArray(c) || c.length !== 4 || typeof c[0] !== 'string' || typeof c[1] !== 'number') {
          return fail(`timer chunk ${i} is malformed`);
        }
        return {
          address: c[0],
          ops: c[1],
          maxEventTime: time(c[2], `timer chunk ${i} event time`),
          maxProcessingTime: time(c[3], `timer chunk ${i} processing time`),
        };
      }),
      tail: (l.tail as unknown[]).map((t, i) => {
        if (!Array.isArray(t) || (t[0] !== 0 && t[0] !== 1)) return fail(`timer op ${i} is malformed`);
        return { add: t[0] === 1, timer: timer(t.slice(1), `timer op ${i}`) };
      }),
      processingFiredThrough: time(l.processingFiredThrough, '"timerLog.processingFiredThrough"'),
      nextChunk: l.nextChunk as number,
      pending: l.pending as number,
    };
  }
  return {
    shardId: o.shardId as string,
    position: (o.position as string | null) ?? undefined,
    commitNumber: o.commitNumber as number,
    watermark: time(o.watermark, '"watermark"'),
    maxTimestamp: time(o.maxTimestamp, '"maxTimestamp"'),
    lastRecordAt: (o.lastRecordAt as number | null) ?? undefined,
    finished: o.finished === true,
    ...(o.depth === undefined ? {} : { depth: o.depth as number }),
    timers,
    ...(timerLog === undefined ? {} : { timerLog }),
  };
}

/** Compares Kinesis-style decimal sequence numbers without losing precision. */
export function compareSequenceNumbers(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}
