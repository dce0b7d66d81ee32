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
import { StateFormatError, wholeNumberOption } from './errors.ts';
import type { Journal, Undoable } from './journal.ts';
import type { StateAddress, StateMutation, StateStore } from './ports.ts';
import type { StateKey } from './state.ts';
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
function isLive(time: number, processing: boolean, watermark: number, processingFired: number): boolean {
  return time > (processing ? processingFired : watermark);
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
    isLive(op.timer.time, op.timer.domain === 'processing', checkpoint.watermark, log.processingFiredThrough);
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
 * reshard, tests and tools), timers sorted by compareTimerSpecs.
 */
export async function withInlineTimers(
  checkpoint: ShardCheckpoint,
  store: StateStore,
): Promise<ShardCheckpoint> {
  if (checkpoint.timerLog === undefined) {
    return { ...checkpoint, timers: [...checkpoint.timers].sort(compareTimerSpecs) };
  }
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

/**
 * (time, key, namespace), then operator uid and domain: a deterministic order for listings and
 * savepoints. Within one domain it is the firing order except among operators, which fire at
 * the same (time, key, namespace) in definition order (their index, see timers.ts), not by uid.
 */
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
// Chunk format, one column per field (one JSON.stringify of flat arrays, no array per op):
// {"v":1,"operators":[uid...],"add":"1011","domain":"eepe","op":[operator index...],"rel":true,
//  "t0":base,"time":[time - t0...],"ns":[namespace (numbers - t0)...],"key":[key...]}
// Times and numeric namespaces are stored relative to t0 (small numbers are cheap to write) when
// that is exact: all of them safe integers ("rel": true); otherwise as they are (times encoded).

/**
 * Timer ops in columns (no object per op): the tail, and what a flush writes. The columns hold
 * ops [0, length) and keep their capacity when truncated: a commit of session windows appends
 * an op or two per element, and growing six arrays from empty again after every flush was a
 * tenth of everything those commits allocated.
 */
class OpColumns {
  readonly add: boolean[] = [];
  readonly operator: string[] = [];
  readonly processing: boolean[] = [];
  readonly time: number[] = [];
  readonly key: StateKey[] = [];
  readonly namespace: TimerNamespace[] = [];
  length = 0;

  push(add: boolean, operator: string, processing: boolean, time: number, key: StateKey, ns: TimerNamespace) {
    const i = this.length;
    this.add[i] = add;
    this.operator[i] = operator;
    this.processing[i] = processing;
    this.time[i] = time;
    this.key[i] = key;
    this.namespace[i] = ns;
    this.length = i + 1;
  }

  pushOp(op: TimerOp): void {
    const t = op.timer;
    this.push(op.add, t.operator, t.domain === 'processing', t.time, t.key, t.namespace);
  }

  /** Keeps the ops for which `keep(i)` is true, in order. */
  retain(keep: (i: number) => boolean): void {
    let n = 0;
    for (let i = 0; i < this.length; i++) {
      if (!keep(i)) continue;
      this.add[n] = this.add[i]!;
      this.operator[n] = this.operator[i]!;
      this.processing[n] = this.processing[i]!;
      this.time[n] = this.time[i]!;
      this.key[n] = this.key[i]!;
      this.namespace[n] = this.namespace[i]!;
      n++;
    }
    this.truncate(n);
  }

  truncate(n: number): void {
    this.length = n;
  }

  toOps(): TimerOp[] {
    const ops: TimerOp[] = [];
    for (let i = 0; i < this.length; i++) {
      ops.push({
        add: this.add[i]!,
        timer: {
          operator: this.operator[i]!,
          domain: this.processing[i] ? 'processing' : 'event',
          time: this.time[i]!,
          key: this.key[i]!,
          namespace: this.namespace[i]!,
        },
      });
    }
    return ops;
  }
}

interface ChunkStats {
  ops: number;
  maxEventTime: number;
  maxProcessingTime: number;
}

/** Chunks of ops [start, end): at most CHUNK_MAX_OPS each, halved while over CHUNK_MAX_CHARS. */
function encodeChunks(
  c: OpColumns,
  start: number,
  end: number,
  write: (text: string, stats: ChunkStats) => void,
): void {
  for (let from = start; from < end; from += CHUNK_MAX_OPS)
    encodeChunk(c, from, Math.min(end, from + CHUNK_MAX_OPS), write);
}

function encodeChunk(
  c: OpColumns,
  start: number,
  end: number,
  write: (text: string, stats: ChunkStats) => void,
) {
  const operators: string[] = [];
  const index = new Map<string, number>();
  const stats: ChunkStats = { ops: end - start, maxEventTime: -Infinity, maxProcessingTime: -Infinity };
  const n = end - start;
  const op = new Array<number>(n);
  const time = new Array<unknown>(n);
  const ns = new Array<TimerNamespace>(n);
  // One character per op, joined at the end: appending to a string would make a node per op.
  const add = new Array<string>(n);
  const domain = new Array<string>(n);
  const t0 = c.time[start]!;
  let relative = Number.isSafeInteger(t0);
  // At least how long the text will be: a chunk sure to exceed CHUNK_MAX_CHARS is split before
  // it is written. Per op: add, domain, op, time and 4 commas, 8 characters, plus ns and key;
  // `digits`: the relative numbers' digits past their first.
  let minChars = -4;
  let digits = 0;
  for (let i = start; i < end; i++) {
    const uid = c.operator[i]!;
    let o = index.get(uid);
    if (o === undefined) {
      o = operators.length;
      operators.push(uid);
      index.set(uid, o);
    }
    op[i - start] = o;
    add[i - start] = c.add[i] ? '1' : '0';
    const t = c.time[i]!;
    if (c.processing[i]) {
      domain[i - start] = 'p';
      stats.maxProcessingTime = Math.max(stats.maxProcessingTime, t);
    } else {
      domain[i - start] = 'e';
      stats.maxEventTime = Math.max(stats.maxEventTime, t);
    }
    const v = c.namespace[i]!;
    if (
      relative &&
      !(Number.isSafeInteger(t - t0) && (typeof v === 'string' || Number.isSafeInteger(v - t0)))
    ) {
      relative = false;
    }
    const k = c.key[i]!;
    minChars += 8 + (typeof v === 'string' ? v.length + 2 : 1) + (typeof k === 'string' ? k.length + 2 : 1);
    if (relative) digits += intChars(t - t0) - 1 + (typeof v === 'number' ? intChars(v - t0) - 1 : 0);
  }
  if (n > 1 && minChars + (relative ? digits : 0) > CHUNK_MAX_CHARS) {
    const half = start + Math.ceil(n / 2);
    encodeChunk(c, start, half, write);
    encodeChunk(c, half, end, write);
    return;
  }
  for (let i = start; i < end; i++) {
    const t = c.time[i]!;
    const v = c.namespace[i]!;
    time[i - start] = relative ? t - t0 : encodeTime(t);
    ns[i - start] = relative && typeof v === 'number' ? v - t0 : v;
  }
  const text = JSON.stringify({
    v: CHUNK_FORMAT,
    operators,
    add: add.join(''),
    domain: domain.join(''),
    op,
    rel: relative,
    t0: relative ? t0 : 0,
    time,
    ns,
    key: c.key.slice(start, end),
  });
  if (text.length <= CHUNK_MAX_CHARS || n === 1) {
    write(text, stats);
    return;
  }
  const half = start + Math.ceil(n / 2);
  encodeChunk(c, start, half, write);
  encodeChunk(c, half, end, write);
}

/** The length of the safe integer x's JSON. */
function intChars(x: number): number {
  let chars = x < 0 ? 2 : 1;
  for (let a = Math.abs(x); a >= 10; a = Math.floor(a / 10)) chars++;
  return chars;
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
  if (typeof raw !== 'object' || raw === null) return fail('not a JSON object');
  const o = raw as Record<string, unknown>;
  if (o.v !== CHUNK_FORMAT)
    return fail(`format ${String(o.v)} is not supported (this floe reads ${CHUNK_FORMAT})`);
  const { operators, add, domain, op, time, ns, key, t0, rel } = o;
  if (
    !Array.isArray(operators) ||
    typeof add !== 'string' ||
    typeof domain !== 'string' ||
    !Array.isArray(op) ||
    !Array.isArray(time) ||
    !Array.isArray(ns) ||
    !Array.isArray(key) ||
    typeof t0 !== 'number' ||
    typeof rel !== 'boolean'
  ) {
    return fail('a column is missing or malformed');
  }
  const n = add.length;
  if (domain.length !== n || op.length !== n || time.length !== n || ns.length !== n || key.length !== n) {
    return fail('its columns differ in length');
  }
  const ops = new Array<TimerOp>(n);
  for (let i = 0; i < n; i++) {
    const operator = operators[op[i] as number];
    const k = key[i];
    const v = ns[i];
    if (
      typeof operator !== 'string' ||
      (add[i] !== '0' && add[i] !== '1') ||
      (domain[i] !== 'e' && domain[i] !== 'p') ||
      (typeof k !== 'string' && typeof k !== 'number') ||
      (typeof v !== 'string' && typeof v !== 'number')
    ) {
      return fail(`op ${i} is malformed`);
    }
    let t: number;
    try {
      t = rel ? t0 + (time[i] as number) : decodeTime(time[i]);
    } catch {
      return fail(`op ${i} has no time`);
    }
    if (typeof t !== 'number' || Number.isNaN(t)) return fail(`op ${i} has no time`);
    ops[i] = {
      add: add[i] === '1',
      timer: {
        operator,
        domain: domain[i] === 'e' ? 'event' : 'processing',
        time: t,
        key: k,
        namespace: rel && typeof v === 'number' ? t0 + v : v,
      },
    };
  }
  return ops;
}

// ---------------------------------------------------------------------------------------------

const ADD = 1;
const PROCESSING = 2;
/** An add whose timer was deleted in the same commit: neither op is written. */
const CANCELLED = 4;

/** The timer log of one ShardTask: the committed log plus the ops of the open commit. */
export class TimerLog implements Undoable {
  private chunks: TimerChunkRef[];
  private readonly tail = new OpColumns();
  private nextChunk: number;
  /** Processing time up to which every processing-time timer has fired. */
  processingFiredThrough: number;
  private readonly tailOps: number;
  // Ops of the open commit: the timer (undefined once it fired, see `fired`) and ADD | PROCESSING flags.
  private readonly opTimers: Array<QueuedTimer | undefined> = [];
  private readonly opFlags: number[] = [];

  constructor(
    private readonly shardId: string,
    committed: TimerLogCheckpoint | undefined,
    options: TimerLogOptions = {},
  ) {
    this.chunks = [...(committed?.chunks ?? [])];
    for (const op of committed?.tail ?? []) this.tail.pushOp(op);
    this.nextChunk = committed?.nextChunk ?? 0;
    this.processingFiredThrough = committed?.processingFiredThrough ?? Number.NEGATIVE_INFINITY;
    this.tailOps = wholeNumberOption('timer log option tailOps', options.tailOps ?? 256);
  }

  /** Records a registration or deletion (undone with the journal if its record fails). */
  record(timer: QueuedTimer, add: boolean, domain: TimeDomain, journal: Journal): void {
    if (!add) {
      // A timer added in this commit (same object in the queue) and deleted again: drop the add
      // and record nothing (a session window pushed back by every element, say).
      // logAt may be stale (an op rolled back, or one of an earlier commit): check the op.
      const i = timer.logAt;
      if (i >= 0 && this.opTimers[i] === timer && (this.opFlags[i]! & CANCELLED) === 0) {
        journal.recordSlot(this.opFlags, i);
        this.opFlags[i] = this.opFlags[i]! | CANCELLED;
        return;
      }
    }
    journal.recordUndo(this, this.opTimers.length, undefined);
    if (add) timer.logAt = this.opTimers.length;
    this.opTimers.push(timer);
    this.opFlags.push((add ? ADD : 0) | (domain === 'processing' ? PROCESSING : 0));
  }

  /**
   * A fired timer's add is dead at the next commit (its time is at or before what its domain
   * fired through), so the log lets go of it now: with a commit interval, the open commit would
   * otherwise keep every timer it registered, fired or not, alive until the commit (most of the
   * young-generation survivors a scavenge copies).
   */
  fired(timer: QueuedTimer): void {
    const i = timer.logAt;
    if (i >= 0 && this.opTimers[i] === timer) this.opTimers[i] = undefined;
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
    const tail = this.tail;
    tail.retain((i) => isLive(tail.time[i]!, tail.processing[i]!, watermark, fired));
    for (let i = 0; i < this.opTimers.length; i++) {
      const t = this.opTimers[i];
      if (t === undefined) continue; // fired
      const flags = this.opFlags[i]!;
      const processing = (flags & PROCESSING) !== 0;
      if ((flags & CANCELLED) !== 0 || !isLive(t.time, processing, watermark, fired)) continue;
      tail.push((flags & ADD) !== 0, uids[t.operator]!, processing, t.time, t.key, t.namespace);
    }
    this.opTimers.length = 0;
    this.opFlags.length = 0;
    const kept: TimerChunkRef[] = [];
    for (const c of this.chunks) {
      if (c.maxEventTime <= watermark && c.maxProcessingTime <= fired)
        mutations.push({ address: c.address, value: null });
      else kept.push(c);
    }
    this.chunks = kept;
    const pending = args.event.size + args.processing.size;

    const pendingSpecs = (): TimerSpec[] =>
      args.processing.appendSpecs(args.event.appendSpecs([], 'event', uids), 'processing', uids);
    if (args.finished) {
      // Children of a reshard take their timers from the parent's checkpoint.
      this.dropLog(mutations);
      return { timers: pendingSpecs().sort(compareTimerSpecs) };
    }
    let logOps = tail.length;
    for (const c of this.chunks) logOps += c.ops;
    if (logOps > this.tailOps && logOps > 4 * pending) {
      // Mostly dead ops (deleted timers): rewrite the pending timers after the fired-through
      // times, by time (so chunks die early). The log stays within 4x the pending timers, so a
      // compaction is paid for by the ops since the last one.
      this.dropLog(mutations);
      const timers = pendingSpecs()
        .filter((t) => isLive(t.time, t.domain === 'processing', watermark, fired))
        .sort(compareTimerSpecs);
      for (const timer of timers) tail.pushOp({ add: true, timer });
      if (tail.length >= this.tailOps) this.flushTail(mutations);
    } else if (tail.length >= this.tailOps) {
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
        tail: tail.toOps(),
        processingFiredThrough: fired,
        nextChunk: this.nextChunk,
        pending,
      },
    };
  }

  private dropLog(mutations: StateMutation[]): void {
    for (const c of this.chunks) mutations.push({ address: c.address, value: null });
    this.chunks = [];
    this.tail.truncate(0);
  }

  private flushTail(mutations: StateMutation[]): void {
    encodeChunks(this.tail, 0, this.tail.length, (text, stats) => {
      const address = timerChunkAddress(this.shardId, this.nextChunk++);
      mutations.push({ address, value: text });
      this.chunks.push({ address, ...stats });
    });
    this.tail.truncate(0);
  }
}

function spec(t: QueuedTimer, domain: TimeDomain, uids: readonly string[]): TimerSpec {
  return { operator: uids[t.operator]!, domain, time: t.time, key: t.key, namespace: t.namespace };
}
