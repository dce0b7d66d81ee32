/**
 * The timer log: a shard's pending timers, stored incrementally instead of whole in every
 * checkpoint (Flink likewise keeps timers beside keyed state, not in the checkpoint metadata).
 *
 * Each commit appends the timer registrations and deletions it made (ops) to a short tail that
 * travels inline in the checkpoint; a tail that grew past `tailOps` is written as an immutable
 * chunk, a keyed-state entry committed atomically with the checkpoint that references it. A
 * commit therefore writes what changed, not every pending timer.
 *
 * Firing writes nothing: a timer fires when the watermark (processing time) passes it, so every
 * op at or before the watermark (`processingFiredThrough`) is dead, and a chunk whose ops are all
 * dead is deleted. Timers registered at or before that time (they fire at the next advance) are
 * not in the log; the checkpoint holds them inline. When the log holds more than 4 ops per
 * pending timer (timers deleted before they fired), it is compacted: the pending timers are
 * rewritten as fresh chunks.
 * A shard that finished (reshard) holds all its timers inline, so its children can take theirs.
 */
import type {
  ShardCheckpoint,
  TimeDomain,
  TimerChunkRef,
  TimerLogCheckpoint,
  TimerNamespace,
  TimerOp,
  TimerSpec,
} from './checkpoint.ts';
import { StateFormatError } from './errors.ts';
import type { Journal, Undoable } from './journal.ts';
import type { StateAddress, StateMutation, StateStore } from './ports.ts';
import { decodeTime, encodeTime } from './time.ts';
import { compareScalars, type QueuedTimer, type TimerQueue } from './timers.ts';

/** The operator part of timer chunk addresses: reserved, no pipeline operator can use it. */
export const TIMER_CHUNK_OPERATOR = 'floe.timers';
const CHUNK_FORMAT = 1;
/** Chunks stay well below DynamoDB's 400 KB item limit. */
const CHUNK_MAX_OPS = 4_096;
const CHUNK_MAX_CHARS = 100_000;

export interface TimerLogOptions {
  /**
   * Ops the inline tail may hold before it is written as a chunk; also the smallest log that is
   * compacted. @default 256
   */
  readonly tailOps?: number;
}

export function timerChunkAddress(shardId: string, sequence: number): StateAddress {
  return `${TIMER_CHUNK_OPERATOR}/${JSON.stringify(`${shardId}/${sequence}`)}`;
}

export function isTimerChunkAddress(address: StateAddress): boolean {
  return address.startsWith(`${TIMER_CHUNK_OPERATOR}/`);
}

/** Whether an op is still live: later than what its domain has fired through. */
function isLive(
  timer: { readonly time: number },
  processing: boolean,
  watermark: number,
  processingFired: number,
) {
  return timer.time > (processing ? processingFired : watermark);
}

/**
 * Replays a checkpoint's timer log in order (chunks, then the tail), calling `visit` for every
 * live op. Chunk texts come from the state store; a missing chunk is a corrupted checkpoint.
 */
export function replayTimerLog(
  checkpoint: ShardCheckpoint,
  chunkTexts: ReadonlyMap<StateAddress, string>,
  visit: (op: TimerOp) => void,
): void {
  const log = checkpoint.timerLog;
  if (log === undefined) return;
  const live = (op: TimerOp) =>
    isLive(op.timer, op.timer.domain === 'processing', checkpoint.watermark, log.processingFiredThrough);
  for (const ref of log.chunks) {
    const text = chunkTexts.get(ref.address);
    if (text === undefined) {
      throw new StateFormatError(
        `the checkpoint of shard ${checkpoint.shardId} references timer chunk ${ref.address}, which the state store does not hold; the state was changed outside floe, restore from a savepoint`,
      );
    }
    for (const op of decodeChunk(ref.address, text)) if (live(op)) visit(op);
  }
  for (const op of log.tail) if (live(op)) visit(op);
}

/** Reads the chunks a checkpoint's timer log references. */
export async function loadTimerChunks(
  checkpoint: ShardCheckpoint,
  store: StateStore,
): Promise<Map<StateAddress, string>> {
  const chunks = checkpoint.timerLog?.chunks ?? [];
  return chunks.length === 0 ? new Map() : store.getMany(chunks.map((c) => c.address));
}

/**
 * The checkpoint with every pending timer inline and no timer log (for savepoints, children of a
 * reshard, tests and tools), timers in firing order.
 */
export async function withInlineTimers(
  checkpoint: ShardCheckpoint,
  store: StateStore,
): Promise<ShardCheckpoint> {
  if (checkpoint.timerLog === undefined) return checkpoint;
  const pending = new Map<string, TimerSpec>();
  const id = (t: TimerSpec) => JSON.stringify([t.operator, t.domain, t.time, t.key, t.namespace]);
  for (const t of checkpoint.timers) pending.set(id(t), t);
  replayTimerLog(checkpoint, await loadTimerChunks(checkpoint, store), (op) => {
    if (op.add) pending.set(id(op.timer), op.timer);
    else pending.delete(id(op.timer));
  });
  const { timerLog: _, ...rest } = checkpoint;
  return { ...rest, timers: [...pending.values()].sort(compareTimerSpecs) };
}

/** Firing order: (time, key, namespace), then operator and domain. */
export function compareTimerSpecs(a: TimerSpec, b: TimerSpec): number {
  return (
    a.time - b.time ||
    compareScalars(a.key, b.key) ||
    compareScalars(a.namespace, b.namespace) ||
    (a.operator < b.operator ? -1 : a.operator > b.operator ? 1 : 0) ||
    (a.domain < b.domain ? -1 : a.domain > b.domain ? 1 : 0)
  );
}

// ---------------------------------------------------------------------------------------------
// Chunk format: {"v":1,"operators":[uid...],"ops":[[add 0|1, operator index, "e"|"p", time, key, namespace]...]}

function encodeChunks(ops: readonly TimerOp[], write: (text: string, stats: ChunkStats) => void): void {
  for (let start = 0; start < ops.length; start += CHUNK_MAX_OPS) {
    encodeChunk(ops.slice(start, start + CHUNK_MAX_OPS), write);
  }
}

/** One chunk, or two halves when it is over CHUNK_MAX_CHARS (long keys). One stringify per chunk. */
function encodeChunk(ops: readonly TimerOp[], write: (text: string, stats: ChunkStats) => void): void {
  const operators: string[] = [];
  const index = new Map<string, number>();
  const stats: ChunkStats = { ops: ops.length, maxEventTime: -Infinity, maxProcessingTime: -Infinity };
  const tuples = ops.map(({ add, timer: t }) => {
    let op = index.get(t.operator);
    if (op === undefined) {
      op = operators.length;
      operators.push(t.operator);
      index.set(t.operator, op);
    }
    if (t.domain === 'event') stats.maxEventTime = Math.max(stats.maxEventTime, t.time);
    else stats.maxProcessingTime = Math.max(stats.maxProcessingTime, t.time);
    return [add ? 1 : 0, op, t.domain === 'event' ? 'e' : 'p', encodeTime(t.time), t.key, t.namespace];
  });
  const text = JSON.stringify({ v: CHUNK_FORMAT, operators, ops: tuples });
  if (text.length <= CHUNK_MAX_CHARS || ops.length === 1) {
    write(text, stats);
    return;
  }
  const half = Math.ceil(ops.length / 2);
  encodeChunk(ops.slice(0, half), write);
  encodeChunk(ops.slice(half), write);
}

interface ChunkStats {
  ops: number;
  maxEventTime: number;
  maxProcessingTime: number;
}

function decodeChunk(address: StateAddress, text: string): TimerOp[] {
  const fail = (what: string): never => {
    throw new StateFormatError(`timer chunk ${address} is corrupted: ${what}; received ${text.slice(0, 80)}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    return fail(`not valid JSON (${String(error)})`);
  }
  const o = raw as { v?: unknown; operators?: unknown; ops?: unknown };
  if (typeof o !== 'object' || o === null) return fail('not a JSON object');
  if (o.v !== CHUNK_FORMAT)
    return fail(`format ${String(o.v)} is not supported (this floe reads ${CHUNK_FORMAT})`);
  if (!Array.isArray(o.operators) || !Array.isArray(o.ops))
    return fail('"operators" or "ops" is not an array');
  const operators = o.operators as unknown[];
  return (o.ops as unknown[]).map((op, i) => {
    if (
      !Array.isArray(op) ||
      op.length !== 6 ||
      (op[0] !== 0 && op[0] !== 1) ||
      (op[2] !== 'e' && op[2] !== 'p')
    ) {
      return fail(`op ${i} is malformed`);
    }
    const operator = operators[op[1] as number];
    if (typeof operator !== 'string') return fail(`op ${i} names no operator`);
    let time: number;
    try {
      time = decodeTime(op[3]);
    } catch {
      return fail(`op ${i} has no time`);
    }
    return {
      add: op[0] === 1,
      timer: {
        operator,
        domain: op[2] === 'e' ? ('event' as const) : ('processing' as const),
        time,
        key: op[4] as string | number,
        namespace: op[5] as TimerNamespace,
      },
    };
  });
}

// ---------------------------------------------------------------------------------------------

const ADD = 1;
const PROCESSING = 2;

/** The timer log of one ShardTask: the committed log plus the ops of the open commit. */
export class TimerLog implements Undoable {
  private chunks: TimerChunkRef[];
  private tail: TimerOp[];
  private nextChunk: number;
  /** Processing time up to which every processing-time timer has fired. */
  processingFiredThrough: number;
  private readonly tailOps: number;
  // Ops of the open commit: the timer and ADD | PROCESSING flags.
  private readonly opTimers: QueuedTimer[] = [];
  private readonly opFlags: number[] = [];

  constructor(
    private readonly shardId: string,
    committed: TimerLogCheckpoint | undefined,
    options: TimerLogOptions = {},
  ) {
    this.chunks = [...(committed?.chunks ?? [])];
    this.tail = [...(committed?.tail ?? [])];
    this.nextChunk = committed?.nextChunk ?? 0;
    this.processingFiredThrough = committed?.processingFiredThrough ?? Number.NEGATIVE_INFINITY;
    this.tailOps = positive('tailOps', options.tailOps ?? 256);
  }

  /** Records a registration or deletion (undone with the journal if its record fails). */
  record(timer: QueuedTimer, add: boolean, domain: TimeDomain, journal: Journal): void {
    journal.recordUndo(this, this.opTimers.length, undefined);
    this.opTimers.push(timer);
    this.opFlags.push((add ? ADD : 0) | (domain === 'processing' ? PROCESSING : 0));
  }

  /** Records an op that no record can roll back (restoring inline timers). */
  append(timer: QueuedTimer, add: boolean, domain: TimeDomain): void {
    this.opTimers.push(timer);
    this.opFlags.push((add ? ADD : 0) | (domain === 'processing' ? PROCESSING : 0));
  }

  /** Journal undo: drop the ops recorded after `length`. */
  undo(length: unknown): void {
    this.opTimers.length = length as number;
    this.opFlags.length = length as number;
  }

  /**
   * Ends the open commit: moves its live ops to the tail, deletes dead chunks, writes a chunk or
   * compacts when due (state mutations appended to `mutations`), and returns the checkpoint's
   * timer fields.
   */
  commit(args: {
    readonly watermark: number;
    readonly finished: boolean;
    readonly uids: readonly string[];
    readonly event: TimerQueue;
    readonly processing: TimerQueue;
    readonly mutations: StateMutation[];
  }): { timers: TimerSpec[]; timerLog?: TimerLogCheckpoint } {
    const { watermark, uids, mutations } = args;
    const fired = this.processingFiredThrough;
    for (let i = 0; i < this.opTimers.length; i++) {
      const t = this.opTimers[i]!;
      const flags = this.opFlags[i]!;
      const processing = (flags & PROCESSING) !== 0;
      if (!isLive(t, processing, watermark, fired)) continue;
      this.tail.push({ add: (flags & ADD) !== 0, timer: spec(t, processing ? 'processing' : 'event', uids) });
    }
    this.opTimers.length = 0;
    this.opFlags.length = 0;
    const live = (op: TimerOp) => isLive(op.timer, op.timer.domain === 'processing', watermark, fired);
    this.tail = this.tail.filter(live);
    const kept: TimerChunkRef[] = [];
    for (const c of this.chunks) {
      if (c.maxEventTime <= watermark && c.maxProcessingTime <= fired)
        mutations.push({ address: c.address, value: null });
      else kept.push(c);
    }
    this.chunks = kept;
    const pending = args.event.size + args.processing.size;

    if (args.finished) {
      // Children of a reshard take their timers from the parent's checkpoint.
      this.dropLog(mutations);
      const timers = args.processing.appendSpecs(
        args.event.appendSpecs([], 'event', uids),
        'processing',
        uids,
      );
      return { timers: timers.sort(compareTimerSpecs) };
    }
    let logOps = this.tail.length;
    for (const c of this.chunks) logOps += c.ops;
    if (logOps > this.tailOps && logOps > 4 * pending) {
      // Mostly dead ops (deleted timers): rewrite the pending timers after the fired-through
      // times, by time (so chunks die early). The log stays within 4x the pending timers, so a
      // compaction is paid for by the ops since the last one.
      this.dropLog(mutations);
      const timers = args.processing
        .appendSpecs(args.event.appendSpecs([], 'event', uids), 'processing', uids)
        .filter((t) => isLive(t, t.domain === 'processing', watermark, fired))
        .sort(compareTimerSpecs);
      this.tail = timers.map((timer) => ({ add: true, timer }));
      if (this.tail.length >= this.tailOps) this.flushTail(mutations);
    } else if (this.tail.length >= this.tailOps) {
      this.flushTail(mutations);
    }

    // Timers at or before the fired-through times (registered in the past) stay inline.
    const inline: TimerSpec[] = [];
    args.event.forEachDue(watermark, (t) => inline.push(spec(t, 'event', uids)));
    args.processing.forEachDue(fired, (t) => inline.push(spec(t, 'processing', uids)));
    return {
      timers: inline.sort(compareTimerSpecs),
      timerLog: {
        chunks: [...this.chunks],
        tail: [...this.tail],
        processingFiredThrough: fired,
        nextChunk: this.nextChunk,
        pending,
      },
    };
  }

  private dropLog(mutations: StateMutation[]): void {
    for (const c of this.chunks) mutations.push({ address: c.address, value: null });
    this.chunks = [];
    this.tail = [];
  }

  private flushTail(mutations: StateMutation[]): void {
    encodeChunks(this.tail, (text, stats) => {
      const address = timerChunkAddress(this.shardId, this.nextChunk++);
      mutations.push({ address, value: text });
      this.chunks.push({ address, ...stats });
    });
    this.tail = [];
  }
}

function spec(t: QueuedTimer, domain: TimeDomain, uids: readonly string[]): TimerSpec {
  return { operator: uids[t.operator]!, domain, time: t.time, key: t.key, namespace: t.namespace };
}

function positive(name: string, n: number): number {
  if (!Number.isInteger(n) || n < 1)
    throw new RangeError(`timer log option ${name} must be a whole number >= 1; received ${n}`);
  return n;
}
