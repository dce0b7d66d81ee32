/**
 * The ShardTask: the deterministic unit of work for one shard of one job.
 * (checkpoint, records, committed state) -> (outputs with stable ids, state mutations, checkpoint).
 *
 * A batch runs in two phases. Phase A ("route") runs the stateless prefix of the pipeline
 * (deserialize, map/filter/flatMap, timestamps, key selection) for every record, so the keys
 * the batch touches are known. They are loaded in one bulk read. Phase B ("apply") then runs
 * the keyed operators synchronously over the in-memory cache, advancing the watermark after
 * each record and firing timers in (time, key, namespace, operator) order. The watermark
 * depends only on the highest timestamp seen, so results do not depend on batch boundaries.
 */
import {
  compareSequenceNumbers,
  depthOf,
  initialCheckpoint,
  type ShardCheckpoint,
  type TimeDomain,
  type TimerNamespace,
  type TimerSpec,
} from './checkpoint.ts';
import type { KeyedOperatorPlan, PipelinePlan } from './compile.ts';
import { DEAD_LETTER_SINK, type GraphNode, RESERVED_SINK_PREFIX, unbindableSinkName } from './dsl.ts';
import {
  describeValue,
  errorMessage,
  isPromiseLike,
  PipelineDefinitionError,
  RollbackNeedsReplayError,
  StateFormatError,
  SYNCHRONOUS_FUNCTIONS,
} from './errors.ts';
import { Journal } from './journal.ts';
import { outputValueJson } from './outputs.ts';
import {
  type Output,
  type SourceRecord,
  type StateAddress,
  type StateMutation,
  type StateStore,
  stateEntryBytes,
} from './ports.ts';
import {
  type KeyedProcessFunction,
  type ProcessContext,
  type Timer,
  TimerOutputError,
  type TimerService,
} from './processor.ts';
import { jsonCopy, KeyedStateBackend, type StateHandles, type StateKey, type StateSpec } from './state.ts';
import { isEventTime, MAX_EVENT_TIME, MAX_TIMER_TIME } from './time.ts';
import { loadTimerChunks, replayTimerLog, TimerLog, type TimerLogOptions } from './timer-log.ts';
import { type QueuedTimer, TimerQueue } from './timers.ts';
import { generatedWatermark, idleWatermark } from './watermarks.ts';

export interface ShardTaskOptions extends TimerLogOptions {
  /** Job id used in output ids. @default the pipeline name */
  readonly job?: string;
  /**
   * Bounds the keys whose state each keyed operator keeps in memory: once a commit leaves more,
   * the least recently used are dropped (to 3/4 of the limit) and read again from the store when
   * needed. Requires committing every result before the next batch is processed, as the shard
   * worker does. @default unbounded (every key read or written stays cached)
   */
  readonly maxCachedKeys?: number;
  /**
   * The checked pass, which the shard worker runs over the uncommitted batches after a commit
   * failed with a StateSerializationError or a record needed a replay (RollbackNeedsReplayError):
   * - after each record and each timer, its outputs and the state it changed must be
   *   JSON-serializable, and no changed state entry larger than the store's
   *   StateStore.maxEntryBytes; a record that fails is rolled back and dead-lettered (reason
   *   'serialization' or 'state-size', or 'timer' for a timer);
   * - user functions get copies of object state values, so a record that fails after changing
   *   one in place is rolled back exactly.
   * It costs a JSON.stringify per output and per changed key, and a JSON copy per object read.
   * @default false (such a value fails the commit; a record that fails after reading an object
   * state value throws RollbackNeedsReplayError)
   */
  readonly checked?: boolean;
}

export interface ProcessOptions {
  /** The reader reached the end of a closed shard. */
  readonly shardEnded?: boolean;
  /** An empty batch means the reader is caught up (idleness may advance by `now`). @default true */
  readonly caughtUp?: boolean;
}

export interface BatchStats {
  readonly records: number;
  /** Records at or before the checkpoint position (redelivered), ignored. */
  readonly duplicates: number;
  readonly deadLetters: number;
  readonly timersFired: number;
}

export interface BatchResult {
  /** False when the batch changed nothing (no records, outputs, state, timers or time); skip its commit. */
  readonly changed: boolean;
  readonly outputs: Output[];
  readonly mutations: StateMutation[];
  readonly checkpoint: ShardCheckpoint;
  readonly stats: BatchStats;
}

export type DeadLetterReason =
  | 'deserialize'
  | 'timestamp'
  | 'key'
  | 'user-function'
  | 'timer'
  | 'serialization'
  | 'state-size'
  /** An output its sink cannot take (over a size limit, no valid key): lib/runtime/routing-sink.ts. */
  | 'sink';

/** The value written to the dead-letter sink. */
export interface DeadLetter {
  readonly reason: DeadLetterReason;
  readonly message: string;
  readonly shardId: string;
  readonly sequenceNumber?: string;
  readonly partitionKey?: string;
  readonly arrivalTime?: number;
  /** The record payload as text (UTF-8), or base64 in `dataBase64` when it is not text. */
  readonly data?: unknown;
  readonly dataBase64?: string;
  readonly operator?: string;
  readonly key?: StateKey;
  readonly time?: number;
  readonly namespace?: TimerNamespace;
  /** Reason `sink`: the sink the output was for, and its value (the dead letter's id is the output's). */
  readonly sink?: string;
  readonly value?: unknown;
}

class RecordError extends Error {
  constructor(
    readonly reason: DeadLetterReason,
    message: string,
  ) {
    super(message);
  }
}

function returnedPromise(call: string): RecordError {
  return new RecordError('user-function', `${call} returned a Promise. ${SYNCHRONOUS_FUNCTIONS}.`);
}

type Emit = (value: unknown, timestamp: number) => void;
const noop: Emit = () => {};

const utf8 = new TextDecoder('utf-8', { fatal: true });

function payloadFields(data: unknown): { data?: unknown; dataBase64?: string } {
  if (data instanceof Uint8Array) {
    try {
      return { data: utf8.decode(data) };
    } catch {
      return { dataBase64: Buffer.from(data).toString('base64') };
    }
  }
  return { data };
}

class OperatorRuntime implements ProcessContext<unknown, StateSpec>, TimerService {
  key: StateKey = '';
  timestamp = 0;
  readonly state: StateHandles<StateSpec>;
  readonly backend: KeyedStateBackend;
  readonly fn: KeyedProcessFunction<unknown, unknown, StateSpec>;
  downstream: Emit = noop;
  readonly side = new Map<string, Emit>();

  constructor(
    private readonly task: ShardTask,
    readonly plan: KeyedOperatorPlan,
    journal: Journal,
  ) {
    this.fn = plan.fn;
    this.backend = new KeyedStateBackend(plan.uid, plan.fn.state ?? {}, journal);
    this.state = this.backend.handles();
  }

  get timers(): TimerService {
    return this;
  }
  get currentWatermark(): number {
    return this.task.watermark;
  }
  get currentProcessingTime(): number {
    return this.task.now;
  }

  emit(value: unknown, timestamp?: number): void {
    if (isPromiseLike(value))
      throw new RecordError(
        'user-function',
        `an emitted value is a Promise (from a window function or ctx.emit). ${SYNCHRONOUS_FUNCTIONS}.`,
      );
    this.downstream(this.snapshot(value), timestamp ?? this.timestamp);
  }

  /**
   * The emitted value as it is now. An object that may be (or hold) a state object, because this
   * record read or wrote one, is copied: a later record changing that state object in place
   * would otherwise change this output too, before its commit stores it, so what is published
   * would depend on where commits fall. In the checked pass reads are copies already, but a
   * written object is still the one in state.
   */
  private snapshot(value: unknown): unknown {
    const journal = this.backend.journal;
    if (typeof value !== 'object' || value === null) return value;
    if (!(journal.objectRead || journal.objectWritten)) {
      // Not state's, unless the record writes it into state next: then it is copied as it is at
      // that write (Journal.noteObjectWrite).
      if (!journal.uncopiedOutputs) {
        journal.uncopiedOutputs = true;
        this.task.noteUncopiedOutputs();
      }
      return value;
    }
    return emittedCopy(value);
  }

  output(sideOutput: string, value: unknown): void {
    let emit = this.side.get(sideOutput);
    if (emit === undefined) {
      // The name of a sink, as DataStream.sink requires it (else: a sink "" or a TypeError).
      if (typeof sideOutput !== 'string' || sideOutput === '' || sideOutput.length > 200) {
        throw new TypeError(
          `ctx.output needs a side output name of 1 to 200 characters; received ${describeValue(sideOutput)}`,
        );
      }
      // floe's own sinks take no user data (a window's late output is floe's, under floe.late).
      if (this.plan.kind === 'process' && sideOutput.startsWith(RESERVED_SINK_PREFIX)) {
        throw new TypeError(
          `ctx.output("${sideOutput}"): side output names starting with "floe." are reserved for floe's own sinks (floe.dead-letter, floe.late); choose another name`,
        );
      }
      const unbindable = unbindableSinkName('ctx.output', sideOutput);
      if (unbindable !== undefined) throw new TypeError(unbindable);
      // An unconsumed side output is written to the sink of the same name.
      emit = this.task.sinkEmitter(sideOutput);
      this.side.set(sideOutput, emit);
    }
    emit(this.snapshot(value), this.timestamp);
  }

  registerEventTimeTimer(time: number, namespace: TimerNamespace = ''): void {
    this.task.registerTimer('event', this.plan.index, checkTime(time), this.key, checkNamespace(namespace));
  }
  deleteEventTimeTimer(time: number, namespace: TimerNamespace = ''): void {
    this.task.deleteTimer('event', this.plan.index, time, this.key, namespace);
  }
  registerProcessingTimeTimer(time: number, namespace: TimerNamespace = ''): void {
    this.task.registerTimer(
      'processing',
      this.plan.index,
      checkTime(time),
      this.key,
      checkNamespace(namespace),
    );
  }
  deleteProcessingTimeTimer(time: number, namespace: TimerNamespace = ''): void {
    this.task.deleteTimer('processing', this.plan.index, time, this.key, namespace);
  }

  /** `slot`: the key's state slot when the caller looked it up (-1: look it up). */
  processElement(key: StateKey, value: unknown, timestamp: number, slot: number): void {
    if (slot < 0) this.backend.setCurrentKey(key);
    else this.backend.enter(key, slot);
    this.key = key;
    this.timestamp = timestamp;
    // Only a plain function returning a Promise gets here (the DSL refuses async ones).
    const returned: unknown = this.fn.processElement(value, this);
    if (returned !== undefined && isPromiseLike(returned)) throw returnedPromise('processElement');
  }

  onTimer(timer: QueuedTimer, domain: TimeDomain): void {
    const slot = this.backend.timerSlot(timer);
    if (slot === undefined) {
      throw new Error(
        `internal: state of key ${describeValue(timer.key)} was not prefetched before its timer fired`,
      );
    }
    this.backend.enter(timer.key, slot);
    this.key = timer.key;
    this.timestamp = timer.time;
    const t: Timer = { time: timer.time, domain, namespace: timer.namespace };
    const returned: unknown = this.fn.onTimer?.(t, this);
    if (returned !== undefined && isPromiseLike(returned)) throw returnedPromise('onTimer');
  }
}

/** A JSON copy of an emitted value (see OperatorRuntime.snapshot). */
function emittedCopy(value: unknown): unknown {
  try {
    return jsonCopy(value);
  } catch (error) {
    throw new RecordError(
      'serialization',
      `an emitted value is not JSON-serializable: ${errorMessage(error)}`,
    );
  }
}

/**
 * Timer times are whole milliseconds within ±MAX_TIMER_TIME (a Date's range plus two durations,
 * room for a window's timers: end - 1 + allowed lateness), or ±Infinity.
 */
function checkTime(time: number): number {
  if (
    typeof time !== 'number' ||
    !(Number.isInteger(time) ? Math.abs(time) <= MAX_TIMER_TIME : Math.abs(time) === Number.POSITIVE_INFINITY)
  ) {
    throw new TypeError(
      `timer time must be whole epoch milliseconds within ±${MAX_TIMER_TIME} (a JavaScript Date's range plus twice the longest duration), or ±Infinity; received ${describeValue(time)}. Round it with Math.floor.`,
    );
  }
  return time;
}

/** Namespaces are stored as JSON: NaN or Infinity would come back as null after a restart. */
function checkNamespace(namespace: TimerNamespace): TimerNamespace {
  if (typeof namespace !== 'string' && (typeof namespace !== 'number' || !Number.isFinite(namespace))) {
    throw new TypeError(
      `timer namespace must be a string or a finite number; received ${describeValue(namespace)}`,
    );
  }
  return namespace;
}

export class ShardTask {
  watermark: number;
  now = 0;
  private maxTimestamp: number;
  /**
   * Arrival time of the last record; -Infinity before any. A number, never undefined: V8 keeps
   * such a field unboxed, where a field that may be undefined allocates on every store.
   */
  private lastArrival = Number.NEGATIVE_INFINITY;
  private position: string | undefined;
  private commitNumber: number;
  private finished: boolean;
  /** The shard's lineage depth (ShardCheckpoint.depth), carried into every checkpoint. */
  private readonly depth: number;
  private readonly job: string;
  private readonly maxCachedKeys: number | undefined;
  private readonly checked: boolean;
  /** The store's StateStore.maxEntryBytes, from the last process call (checked in the checked pass). */
  private maxEntryBytes: number | undefined;
  /** The store's StateStore.maxAddressBytes, from the last process call (checked in the checked pass). */
  private maxAddressBytes: number | undefined;
  private readonly journal = new Journal();
  private readonly eventTimers = new TimerQueue();
  private readonly processingTimers = new TimerQueue();
  private readonly operators: OperatorRuntime[];
  private readonly operatorUids: readonly string[];
  private readonly operatorIndex: ReadonlyMap<string, number>;
  private readonly timerLog: TimerLog;
  /** A checkpoint whose timer log has chunks is restored by the first process call (it reads state). */
  private pendingTimerRestore: ShardCheckpoint | undefined;
  /** The checkpoint of the last commit (returned for batches that changed nothing). */
  private lastCheckpoint: ShardCheckpoint;
  private readonly route: Emit;
  private readonly sinkNames: string[] = [];
  private readonly sinkIndex = new Map<string, number>();
  private readonly sinkEmitters = new Map<string, Emit>();
  /** The batch's outputs, created with their final ids (see outputPrefix). */
  private outputs: Output[] = [];
  /** Index of the current record's first output emitted uncopied (valid while Journal.uncopiedOutputs). */
  private uncopiedFrom = 0;
  /**
   * Id prefix of this batch's outputs. A batch with outputs always commits, as commit number
   * `commitNumber + 1`, so ids can be assigned when an output is emitted; a rolled-back record
   * truncates the list, so ids stay dense.
   */
  private outputPrefix = '';
  private deadLetters = 0;
  private timersFired = 0;
  /** Fresh and redelivered records processed since the last commit. */
  private pendingRecords = 0;
  private pendingDuplicates = 0;
  /** Bumped on every timer change, so an otherwise empty batch that moved timers is committed. */
  private timerVersion = 0;
  private committed = { position: '', watermark: 0, maxTimestamp: 0, finished: false, timerVersion: 0 };

  // Phase A buffers, reused across batches (filled up to aLen, never shrunk, so a batch does
  // not reallocate them): one row per routed element.
  private aLen = 0;
  private readonly aKind: number[] = []; // 0: keyed element, 1: sink output
  private readonly aTarget: number[] = [];
  private readonly aKey: StateKey[] = [];
  private readonly aValue: unknown[] = [];
  private readonly aTs: number[] = [];
  /** The element's key's state slot, found by prefetch (-1: look it up when applying). */
  private readonly aSlot: number[] = [];
  private recordMaxTs = Number.NEGATIVE_INFINITY;
  // Per-record results of phase A (valid up to the batch's record count).
  private readonly rStart: number[] = [];
  private readonly rMaxTs: number[] = [];
  private readonly rError: Array<RecordError | undefined> = [];
  /** Arrival times, copied in phase A so phase B does not reload every record object. */
  private readonly rArrival: number[] = [];

  constructor(
    readonly plan: PipelinePlan,
    checkpoint: ShardCheckpoint | string,
    options: ShardTaskOptions = {},
  ) {
    const cp = typeof checkpoint === 'string' ? initialCheckpoint(checkpoint) : checkpoint;
    this.shardId = cp.shardId;
    this.job = options.job ?? plan.name;
    const maxCachedKeys = options.maxCachedKeys;
    if (maxCachedKeys !== undefined && !(Number.isInteger(maxCachedKeys) && maxCachedKeys >= 1)) {
      throw new PipelineDefinitionError(
        `maxCachedKeys must be a whole number >= 1; received ${describeValue(maxCachedKeys)}`,
      );
    }
    this.maxCachedKeys = maxCachedKeys;
    this.checked = options.checked === true;
    this.watermark = cp.watermark;
    this.maxTimestamp = cp.maxTimestamp;
    this.lastArrival = cp.lastRecordAt ?? Number.NEGATIVE_INFINITY;
    this.position = cp.position;
    this.commitNumber = cp.commitNumber;
    this.finished = cp.finished;
    this.depth = depthOf(cp);
    this.outputPrefix = this.nextOutputPrefix();
    this.journal.copyOutputs = () => this.copyUncopiedOutputs();
    this.operators = plan.operators.map((op) => new OperatorRuntime(this, op, this.journal));
    for (const op of this.operators) op.backend.copyOnRead = this.checked;
    this.operatorUids = this.operators.map((o) => o.plan.uid);
    for (const op of this.operators) {
      op.downstream = this.chain(plan.children.get(op.plan.node) ?? [], 'direct');
      for (const [name, node] of op.plan.sideOutputs)
        op.side.set(name, this.chain(plan.children.get(node) ?? [], 'direct'));
    }
    this.route = this.chain(plan.children.get(plan.source) ?? [], 'route');
    this.operatorIndex = new Map(this.operators.map((o) => [o.plan.uid, o.plan.index]));
    this.timerLog = new TimerLog(cp.shardId, cp.timerLog, options);
    // Inline timers. Without a timer log (format 1, a reshard child, a restored savepoint) they
    // are every pending timer, and the log starts with them (ops of the first commit).
    for (const t of cp.timers) this.restoreTimer(t, true, cp.timerLog === undefined);
    if ((cp.timerLog?.chunks.length ?? 0) > 0) this.pendingTimerRestore = cp;
    else replayTimerLog(cp, new Map(), (op) => this.restoreTimer(op.timer, op.add, false));
    this.lastCheckpoint = cp;
    this.committed = {
      position: cp.position ?? '',
      watermark: cp.watermark,
      maxTimestamp: cp.maxTimestamp,
      finished: cp.finished,
      timerVersion: this.timerVersion,
    };
  }

  readonly shardId: string;

  /** Adds (or deletes) a restored timer; `log` also records it as an op of the open commit. */
  private restoreTimer(t: TimerSpec, add: boolean, log: boolean): void {
    const index = this.operatorIndex.get(t.operator);
    if (index === undefined) {
      throw new StateFormatError(
        `checkpoint of shard ${this.shardId} has timers of operator "${t.operator}", which pipeline "${this.plan.name}" no longer has (operators: ${this.operatorUids.join(', ') || 'none'}). Give operators stable uids, or restore into a new job.`,
      );
    }
    const queue = t.domain === 'event' ? this.eventTimers : this.processingTimers;
    const timer = add
      ? queue.insert(index, t.time, t.key, t.namespace)
      : queue.remove(index, t.time, t.key, t.namespace);
    if (log && timer !== undefined) this.timerLog.append(timer, add, t.domain);
  }

  /** Reads the timer chunks of the checkpoint this task started from (once, before any work). */
  private async restoreTimers(store: StateStore): Promise<void> {
    const cp = this.pendingTimerRestore;
    if (cp === undefined) return;
    const chunks = await loadTimerChunks(cp, store);
    replayTimerLog(cp, chunks, (op) => this.restoreTimer(op.timer, op.add, false));
    this.pendingTimerRestore = undefined;
  }

  /**
   * Processes one batch and ends the commit: the result holds everything processed since the
   * last commit (this batch, and any batches given to `process` before it). Records at or
   * before the checkpoint position are skipped.
   */
  async processBatch(
    records: readonly SourceRecord[],
    store: StateStore,
    now: number,
    options: ProcessOptions & {
      /**
       * Whether a batch whose only change is an idleness advance of the watermark is worth a
       * commit. Such an advance is recomputed from the committed checkpoint after a restart, so a
       * caught-up worker polling every few hundred ms need not commit each one. @default true
       */
      commitIdleWatermark?: boolean;
    } = {},
  ): Promise<BatchResult> {
    await this.process(records, store, now, options);
    return this.takeCommit(options);
  }

  /**
   * Processes one batch without ending the commit, so several reads can share one commit (a
   * commit interval, as Flink's checkpoint interval): outputs, state changes and the position
   * accumulate until `takeCommit`. Nothing of it is durable before that commit; after a crash
   * the batches are read and processed again from the last checkpoint.
   * @throws RollbackNeedsReplayError outside the checked pass, when a record or timer failed
   * after reading state objects: discard the task and process the uncommitted batches again
   * from the last commit with `checked` (as processBatch and processWatermark do too).
   */
  async process(
    records: readonly SourceRecord[],
    store: StateStore,
    now: number,
    options: ProcessOptions = {},
  ): Promise<void> {
    await this.restoreTimers(store);
    this.setProcessingTime(now);
    this.maxEntryBytes = store.maxEntryBytes;
    this.maxAddressBytes = store.maxAddressBytes;
    const fresh = this.freshRecords(records);
    this.pendingRecords += fresh.length;
    this.pendingDuplicates += records.length - fresh.length;

    // Phase A: route every record through the stateless prefix.
    this.routeBatch(fresh);

    // Idleness is judged by record arrival times, and by `now` only when the reader is caught
    // up with no records, so the watermark never depends on when a batch happened to be read.
    const strategy = this.plan.strategy;
    const caughtUp = fresh.length === 0 && options.caughtUp !== false;

    // Prefetch the state of every key the batch may touch, including due timers' keys.
    await this.prefetch(store, this.reachableWatermark(fresh, caughtUp));

    // Phase B: apply.
    if (strategy !== undefined && caughtUp) {
      this.advanceWatermark(idleWatermark(strategy, this.maxTimestamp, this.lastRecordAt, this.now));
    }
    this.fireProcessingTimers();
    this.applyBatch(fresh);
    this.fireProcessingTimers();
    if (fresh.length > 0) this.position = fresh[fresh.length - 1]!.sequenceNumber;
    if (options.shardEnded) this.finished = true;
    // Drop the batch's values (the buffers keep their capacity).
    this.aValue.fill(undefined, 0, this.aLen);
    this.rError.fill(undefined, 0, fresh.length);
    this.aLen = 0;
  }

  /** Arrival time of the last record, if any (the checkpoint's lastRecordAt). */
  private get lastRecordAt(): number | undefined {
    return this.lastArrival === Number.NEGATIVE_INFINITY ? undefined : this.lastArrival;
  }

  /** Records processed since the last commit (0 right after `takeCommit`). */
  get uncommittedRecords(): number {
    return this.pendingRecords;
  }

  /**
   * The checkpoint of the last commit (or the one the task started from) when the task holds
   * nothing uncommitted, so it can go on from wherever that checkpoint is the stored one; else
   * undefined. An idleness advance of the watermark that was not worth a commit does not count:
   * it depends on processing time only, and the task would have kept it had its invocation
   * gone on.
   */
  get committedCheckpoint(): ShardCheckpoint | undefined {
    const last = this.committed;
    const clean =
      this.pendingRecords === 0 &&
      this.pendingDuplicates === 0 &&
      this.outputs.length === 0 &&
      this.deadLetters === 0 &&
      this.timersFired === 0 &&
      this.timerVersion === last.timerVersion &&
      (this.position ?? '') === last.position &&
      this.maxTimestamp === last.maxTimestamp &&
      this.finished === last.finished &&
      this.operators.every((op) => op.backend.dirty.length === 0);
    return clean ? this.lastCheckpoint : undefined;
  }

  /** Keys whose state (or its absence) is held in memory, over all operators. */
  get cachedKeys(): number {
    let n = 0;
    for (const op of this.operators) n += op.backend.cache.size;
    return n;
  }

  /**
   * Ends the commit: the outputs, mutations and checkpoint of everything processed since the
   * last one. `changed` is false (and nothing needs committing) when nothing changed.
   */
  takeCommit(options: { commitIdleWatermark?: boolean } = {}): BatchResult {
    const records = this.pendingRecords;
    const duplicates = this.pendingDuplicates;
    this.pendingRecords = 0;
    this.pendingDuplicates = 0;
    return this.finish(records, duplicates, options.commitIdleWatermark !== false);
  }

  /** Replays the batch's watermark progression to bound the highest watermark it can reach. */
  private reachableWatermark(fresh: readonly SourceRecord[], caughtUp: boolean): number {
    const strategy = this.plan.strategy;
    let reachable = this.watermark;
    if (strategy !== undefined && strategy.idleTimeout === undefined) {
      // Without idleness only the highest timestamp moves the watermark.
      const maxTs = this.rMaxTs;
      const errors = this.rError;
      let m = this.maxTimestamp;
      for (let r = 0; r < fresh.length; r++) {
        if (errors[r] === undefined && maxTs[r]! > m) m = maxTs[r]!;
      }
      if (fresh.length > 0) reachable = Math.max(reachable, generatedWatermark(strategy, m));
    } else if (strategy !== undefined) {
      const maxTs = this.rMaxTs;
      const errors = this.rError;
      let m = this.maxTimestamp;
      let last = this.lastRecordAt;
      for (let r = 0; r < fresh.length; r++) {
        const arrival = fresh[r]!.arrivalTime;
        reachable = Math.max(reachable, idleWatermark(strategy, m, last, arrival));
        if (errors[r] === undefined) m = Math.max(m, maxTs[r]!);
        last = last === undefined ? arrival : Math.max(last, arrival);
        reachable = Math.max(reachable, generatedWatermark(strategy, m));
      }
      if (caughtUp) reachable = Math.max(reachable, idleWatermark(strategy, m, last, this.now));
    }
    return reachable;
  }

  /**
   * Records after the checkpoint position (all of them, without copying, in the usual case).
   * A batch is in shard order, as every reader returns it, so when its first record is new,
   * all are.
   */
  private freshRecords(records: readonly SourceRecord[]): readonly SourceRecord[] {
    const position = this.position;
    if (position === undefined || records.length === 0) return records;
    if (compareSequenceNumbers(records[0]!.sequenceNumber, position) > 0) return records;
    return records.filter((r) => compareSequenceNumbers(r.sequenceNumber, position) > 0);
  }

  /** Phase A: fills the routed-element buffers and, per record, rStart / rMaxTs / rError. */
  private routeBatch(fresh: readonly SourceRecord[]): void {
    const starts = this.rStart;
    const maxTs = this.rMaxTs;
    const errors = this.rError;
    this.aLen = 0;
    const deserialize = this.plan.deserializer;
    for (let r = 0; r < fresh.length; r++) {
      const record = fresh[r]!;
      const start = this.aLen;
      starts[r] = start;
      this.rArrival[r] = record.arrivalTime;
      this.recordMaxTs = Number.NEGATIVE_INFINITY;
      let value: unknown;
      try {
        value = deserialize(record.data, record);
      } catch (error) {
        errors[r] = new RecordError('deserialize', errorMessage(error));
        maxTs[r] = Number.NEGATIVE_INFINITY;
        continue;
      }
      try {
        this.route(value, record.arrivalTime);
        errors[r] = undefined;
      } catch (error) {
        this.truncateRouted(start);
        errors[r] =
          error instanceof RecordError ? error : new RecordError('user-function', errorMessage(error));
      }
      maxTs[r] = this.recordMaxTs;
    }
    starts[fresh.length] = this.aLen;
  }

  /** Phase B: applies each record, advancing the watermark after it. */
  private applyBatch(fresh: readonly SourceRecord[]): void {
    const strategy = this.plan.strategy;
    const idleness = strategy?.idleTimeout !== undefined; // else idleWatermark is -Infinity
    const starts = this.rStart;
    const maxTs = this.rMaxTs;
    const errors = this.rError;
    const arrivals = this.rArrival;
    for (let r = 0; r < fresh.length; r++) {
      const arrival = arrivals[r]!;
      if (idleness) {
        this.advanceWatermark(idleWatermark(strategy, this.maxTimestamp, this.lastRecordAt, arrival));
      }
      if (arrival > this.lastArrival) this.lastArrival = arrival;
      const error = errors[r] ?? this.applyRecord(starts[r]!, starts[r + 1]!, fresh, r);
      if (error !== undefined) {
        const record = fresh[r]!;
        this.deadLetter({
          reason: error.reason,
          message: error.message,
          shardId: this.shardId,
          sequenceNumber: record.sequenceNumber,
          partitionKey: record.partitionKey,
          arrivalTime: record.arrivalTime,
          ...payloadFields(record.data),
        });
        continue;
      }
      const t = maxTs[r]!;
      if (strategy !== undefined && t > this.maxTimestamp) {
        this.maxTimestamp = t;
        this.advanceWatermark(generatedWatermark(strategy, t));
      }
    }
  }

  /** Advances the watermark to at least `watermark` (Flink's test-harness processWatermark). */
  async processWatermark(watermark: number, store: StateStore, now: number): Promise<BatchResult> {
    await this.restoreTimers(store);
    this.setProcessingTime(now);
    this.maxEntryBytes = store.maxEntryBytes;
    this.maxAddressBytes = store.maxAddressBytes;
    await this.prefetch(store, Math.max(this.watermark, watermark));
    this.advanceWatermark(watermark);
    this.fireProcessingTimers();
    return this.takeCommit();
  }

  /** The checkpoint of this commit; writes and deletes timer chunks into `mutations`. */
  private commitCheckpoint(mutations: StateMutation[]): ShardCheckpoint {
    if (this.pendingTimerRestore !== undefined) {
      // Committing the log without its chunks' timers in the queues would drop them.
      throw new Error(`internal: shard ${this.shardId} commits before its timers were restored`);
    }
    const timers = this.timerLog.commit({
      watermark: this.watermark,
      finished: this.finished,
      uids: this.operatorUids,
      event: this.eventTimers,
      processing: this.processingTimers,
      mutations,
    });
    this.lastCheckpoint = {
      shardId: this.shardId,
      position: this.position,
      commitNumber: this.commitNumber,
      watermark: this.watermark,
      maxTimestamp: this.maxTimestamp,
      lastRecordAt: this.lastRecordAt,
      ...timers,
      finished: this.finished,
      ...(this.depth === 0 ? {} : { depth: this.depth }),
    };
    return this.lastCheckpoint;
  }

  /** Cached state of one key of one operator, as JSON (for tests and the test driver). */
  inspectState(operatorUid: string, key: StateKey): Record<string, unknown> | undefined {
    const op = this.operators.find((o) => o.plan.uid === operatorUid);
    if (op === undefined) throw new PipelineDefinitionError(`no operator with uid "${operatorUid}"`);
    return op.backend.inspect(key);
  }

  /** @internal */
  registerTimer(domain: TimeDomain, op: number, time: number, key: StateKey, ns: TimerNamespace): void {
    const queue = domain === 'event' ? this.eventTimers : this.processingTimers;
    const added = queue.insert(op, time, key, ns);
    if (added !== undefined) {
      // Registered for the operator's current key (see QueuedTimer.slot).
      const backend = this.operators[op]!.backend;
      added.slot = backend.currentSlot;
      added.slotEpoch = backend.dropEpoch;
      this.timerVersion++;
      this.journal.recordUndo(queue, added, 1);
      this.timerLog.record(added, true, domain, this.journal);
    }
  }

  /** @internal */
  deleteTimer(domain: TimeDomain, op: number, time: number, key: StateKey, ns: TimerNamespace): void {
    const queue = domain === 'event' ? this.eventTimers : this.processingTimers;
    const removed = queue.remove(op, time, key, ns);
    if (removed !== undefined) {
      this.timerVersion++;
      this.journal.recordUndo(queue, removed, 0);
      this.timerLog.record(removed, false, domain, this.journal);
    }
  }

  /** @internal The current record emits an object uncopied: its outputs from here on may need a copy. */
  noteUncopiedOutputs(): void {
    this.uncopiedFrom = this.outputs.length;
  }

  /** The current record's outputs since its first uncopied emission, as JSON copies. */
  private copyUncopiedOutputs(): void {
    const outputs = this.outputs;
    for (let i = this.uncopiedFrom; i < outputs.length; i++) {
      const o = outputs[i]!;
      if (typeof o.value === 'object' && o.value !== null) outputs[i] = { ...o, value: emittedCopy(o.value) };
    }
  }

  /** @internal An emitter writing to the sink `name` (in phase B). */
  sinkEmitter(name: string): Emit {
    let emit = this.sinkEmitters.get(name);
    if (emit === undefined) {
      emit = (value) => {
        this.outputs.push({ id: this.outputPrefix + this.outputs.length, sink: name, value });
      };
      this.sinkEmitters.set(name, emit);
    }
    return emit;
  }

  /** Applies the elements [start, end) that record `r` of `fresh` routed. */
  private applyRecord(
    start: number,
    end: number,
    fresh: readonly SourceRecord[],
    r: number,
  ): RecordError | undefined {
    if (start === end) return undefined;
    const mark = this.outputs.length;
    this.journal.reset();
    try {
      for (let i = start; i < end; i++) {
        if (this.aKind[i] === 0) {
          this.operators[this.aTarget[i]!]!.processElement(
            this.aKey[i]!,
            this.aValue[i],
            this.aTs[i]!,
            this.aSlot[i]!,
          );
        } else {
          this.outputs.push({
            id: this.outputPrefix + this.outputs.length,
            sink: this.sinkNames[this.aTarget[i]!]!,
            value: this.aValue[i],
          });
        }
      }
      if (this.checked) this.checkRecordSerializable(mark, start, end);
      this.journal.reset();
      return undefined;
    } catch (error) {
      this.refuseInexactRollback(error, () => `the record at sequence number ${fresh[r]!.sequenceNumber}`);
      // All-or-nothing per record: undo its state and timer changes and drop its outputs.
      this.journal.rollback();
      this.outputs.length = mark;
      return error instanceof RecordError ? error : new RecordError('user-function', errorMessage(error));
    }
  }

  /**
   * Outside the checked pass, a record or timer that failed after reading an object state value
   * may have changed it in place, which the journal cannot undo: the task's state is no longer
   * exact. Rather than dead-letter it with a partial effect, stop; the caller processes the
   * uncommitted batches again in the checked pass, which copies state values on read.
   */
  private refuseInexactRollback(error: unknown, what: () => string): void {
    if (this.checked || !this.journal.objectRead) return;
    throw new RollbackNeedsReplayError(
      `${what()} of shard ${this.shardId} failed after reading state objects it may have changed in place (${errorMessage(error)}); its effects cannot be undone exactly here. Discard this task and process the uncommitted batches again from the last commit with the checked option (the shard worker and the test driver do), which dead-letters it exactly.`,
    );
  }

  /** The checked pass: the outputs from `mark` on, and the state of the keys of elements [start, end). */
  private checkRecordSerializable(mark: number, start: number, end: number): void {
    this.checkOutputsSerializable(mark);
    for (let i = start; i < end; i++) {
      if (this.aKind[i] === 0) this.checkStateSerializable(this.operators[this.aTarget[i]!]!, this.aKey[i]!);
    }
  }

  private checkOutputsSerializable(mark: number): void {
    for (let i = mark; i < this.outputs.length; i++) {
      try {
        outputValueJson(this.outputs[i]!);
      } catch (error) {
        throw new RecordError('serialization', errorMessage(error));
      }
    }
  }

  private checkStateSerializable(op: OperatorRuntime, key: StateKey): void {
    const entry = op.backend.entry(key);
    if (entry === undefined) return;
    let text: string | null;
    try {
      text = op.backend.serialize(entry);
    } catch (error) {
      throw new RecordError('serialization', errorMessage(error));
    }
    const address = op.backend.address(key);
    const addressLimit = this.maxAddressBytes;
    if (addressLimit !== undefined && Buffer.byteLength(address) > addressLimit) {
      throw new RecordError(
        'state-size',
        `the state address of key ${describeValue(key)} in operator "${op.plan.uid}" takes ${Buffer.byteLength(address)} bytes, over the ${addressLimit} the state store holds (on AWS, DynamoDB's 2 KB partition key limit). Key by something shorter (an id, or a hash of the long value).`,
      );
    }
    const limit = this.maxEntryBytes;
    if (limit === undefined || text === null) return;
    const bytes = stateEntryBytes(address, text);
    if (bytes > limit) {
      throw new RecordError(
        'state-size',
        `the state of key ${describeValue(key)} in operator "${op.plan.uid}" would take ${bytes} bytes, over the ${limit} the state store holds per key and operator (on AWS, DynamoDB's 400 KB item limit). Keep per-key state bounded: aggregate instead of collecting elements, clear state with timers, or give it a TTL.`,
      );
    }
  }

  private setProcessingTime(now: number): void {
    this.now = Math.max(this.now, now);
    for (const op of this.operators) op.backend.now = this.now; // TTL is processing time
  }

  private advanceWatermark(target: number): void {
    if (!(target > this.watermark)) return;
    this.watermark = target;
    this.eventTimers.fireDue(target, this.fireEventTimer);
  }

  private readonly fireEventTimer = (timer: QueuedTimer): void => this.fire(timer, 'event');
  private readonly fireProcessingTimer = (timer: QueuedTimer): void => this.fire(timer, 'processing');

  private fireProcessingTimers(): void {
    this.processingTimers.fireDue(this.now, this.fireProcessingTimer);
    // Every processing-time timer up to now has fired (the log's ops up to it are dead).
    this.timerLog.processingFiredThrough = Math.max(this.timerLog.processingFiredThrough, this.now);
  }

  private fire(timer: QueuedTimer, domain: TimeDomain): void {
    const op = this.operators[timer.operator]!;
    const mark = this.outputs.length;
    this.journal.reset();
    this.timerLog.fired(timer);
    this.timersFired++;
    this.timerVersion++;
    try {
      op.onTimer(timer, domain);
      if (this.checked) {
        this.checkOutputsSerializable(mark);
        this.checkStateSerializable(op, timer.key);
      }
      this.journal.reset();
    } catch (error) {
      if (error instanceof TimerOutputError) {
        // Its state and timer changes are complete; only its output failed (see TimerOutputError).
        this.journal.reset();
      } else {
        this.refuseInexactRollback(
          error,
          () =>
            `the ${domain}-time timer (${timer.time}, ${describeValue(timer.key)}, ${describeValue(timer.namespace)}) of operator "${op.plan.uid}"`,
        );
        this.journal.rollback();
      }
      this.outputs.length = mark;
      this.deadLetter({
        reason: 'timer',
        message: errorMessage(error instanceof TimerOutputError ? error.error : error),
        shardId: this.shardId,
        operator: op.plan.uid,
        key: timer.key,
        time: timer.time,
        namespace: timer.namespace,
      });
    }
  }

  private deadLetter(letter: DeadLetter): void {
    this.deadLetters++;
    this.outputs.push({ id: this.outputPrefix + this.outputs.length, sink: DEAD_LETTER_SINK, value: letter });
  }

  private async prefetch(store: StateStore, watermarkLimit: number): Promise<void> {
    const wanted = new Map<StateAddress, { op: OperatorRuntime; key: StateKey }>();
    const wantTimer = (t: QueuedTimer): void => {
      const op = this.operators[t.operator]!;
      if (op.backend.timerSlot(t) === undefined) wanted.set(op.backend.address(t.key), { op, key: t.key });
    };
    for (let i = 0; i < this.aLen; i++) {
      if (this.aKind[i] !== 0) continue;
      // Remember the slot, so applying the element needs no second lookup.
      const op = this.operators[this.aTarget[i]!]!;
      const key = this.aKey[i]!;
      const slot = op.backend.cache.get(key);
      this.aSlot[i] = slot ?? -1;
      if (slot === undefined) wanted.set(op.backend.address(key), { op, key });
    }
    this.eventTimers.forEachDue(watermarkLimit, wantTimer);
    this.processingTimers.forEachDue(this.now, wantTimer);
    if (wanted.size === 0) return;
    const loaded = await store.getMany([...wanted.keys()], { shardId: this.shardId, depth: this.depth });
    for (const [address, { op, key }] of wanted) op.backend.load(key, loaded.get(address));
  }

  private finish(records: number, duplicates: number, commitWatermarkOnly = true): BatchResult {
    const mutations: StateMutation[] = [];
    for (const op of this.operators) {
      op.backend.now = this.now;
      op.backend.takeMutations(mutations);
      if (this.maxCachedKeys !== undefined) op.backend.evict(this.maxCachedKeys);
    }
    const last = this.committed;
    const changedBeyondWatermark =
      records > 0 ||
      this.outputs.length > 0 ||
      mutations.length > 0 ||
      (this.position ?? '') !== last.position ||
      this.maxTimestamp !== last.maxTimestamp ||
      this.finished !== last.finished ||
      this.timerVersion !== last.timerVersion;
    const changed = changedBeyondWatermark || (commitWatermarkOnly && this.watermark !== last.watermark);
    if (!changed) {
      return {
        changed,
        outputs: [],
        mutations,
        checkpoint: this.lastCheckpoint,
        stats: { records, duplicates, deadLetters: 0, timersFired: 0 },
      };
    }
    this.committed = {
      position: this.position ?? '',
      watermark: this.watermark,
      maxTimestamp: this.maxTimestamp,
      finished: this.finished,
      timerVersion: this.timerVersion,
    };
    this.commitNumber++;
    const outputs = this.outputs;
    this.outputs = [];
    this.outputPrefix = this.nextOutputPrefix();
    const stats = { records, duplicates, deadLetters: this.deadLetters, timersFired: this.timersFired };
    this.deadLetters = 0;
    this.timersFired = 0;
    return { changed, outputs, mutations, checkpoint: this.commitCheckpoint(mutations), stats };
  }

  private nextOutputPrefix(): string {
    return `${this.job}/${this.shardId}/${this.commitNumber + 1}/`;
  }

  private truncateRouted(length: number): void {
    this.aValue.fill(undefined, length, this.aLen);
    this.aLen = length;
  }

  private sinkId(name: string): number {
    let id = this.sinkIndex.get(name);
    if (id === undefined) {
      id = this.sinkNames.length;
      this.sinkNames.push(name);
      this.sinkIndex.set(name, id);
    }
    return id;
  }

  /** Builds the push function for a set of sibling nodes. */
  private chain(nodes: readonly GraphNode[], phase: 'route' | 'direct'): Emit {
    const emits = nodes.map((n) => this.node(n, phase));
    if (emits.length === 0) return noop;
    if (emits.length === 1) return emits[0]!;
    return (value, ts) => {
      for (const emit of emits) emit(value, ts);
    };
  }

  private node(node: GraphNode, phase: 'route' | 'direct'): Emit {
    const next = (): Emit => this.chain(this.plan.children.get(node) ?? [], phase);
    switch (node.kind) {
      case 'map': {
        const fn = node.fn!;
        const n = next();
        return (v, ts) => {
          const out = fn(v);
          if (isPromiseLike(out)) throw returnedPromise('map');
          n(out, ts);
        };
      }
      case 'filter': {
        const fn = node.fn!;
        const n = next();
        return (v, ts) => {
          const keep = fn(v);
          if (isPromiseLike(keep)) throw returnedPromise('filter'); // a Promise is truthy
          if (keep) n(v, ts);
        };
      }
      case 'flatMap': {
        const fn = node.fn!;
        const n = next();
        return (v, ts) => {
          const out = fn(v) as Iterable<unknown> | null | undefined;
          if (typeof out?.[Symbol.iterator] !== 'function') {
            if (isPromiseLike(out)) throw returnedPromise('flatMap');
            throw new RecordError(
              'user-function',
              `flatMap must return an iterable (an array, a Set, a generator); it returned ${describeValue(out)}`,
            );
          }
          for (const x of out!) n(x, ts);
        };
      }
      case 'timestamps': {
        const fn = node.fn!;
        const n = next();
        return (v) => {
          const t = fn(v);
          if (!isEventTime(t)) {
            throw new RecordError(
              'timestamp',
              `timestamp extractor returned ${describeValue(t)}; expected epoch milliseconds within ±${MAX_EVENT_TIME} (a JavaScript Date's range)`,
            );
          }
          const ts = Math.floor(t);
          if (ts > this.recordMaxTs) this.recordMaxTs = ts;
          n(v, ts);
        };
      }
      case 'keyed': {
        const index = this.plan.operators.findIndex((o) => o.node === node);
        const keyOf = node.keySelector!;
        return (v, ts) => {
          const key = keyOf(v);
          if (typeof key !== 'string' && (typeof key !== 'number' || !Number.isFinite(key))) {
            throw new RecordError(
              'key',
              `key selector returned ${describeValue(key)}; keys must be strings or finite numbers`,
            );
          }
          const i = this.aLen++;
          this.aKind[i] = 0;
          this.aTarget[i] = index;
          this.aKey[i] = key;
          this.aValue[i] = v;
          this.aTs[i] = ts;
        };
      }
      case 'sink': {
        const name = node.name!;
        if (phase === 'direct') return this.sinkEmitter(name);
        const id = this.sinkId(name);
        return (v, ts) => {
          const i = this.aLen++;
          this.aKind[i] = 1;
          this.aTarget[i] = id;
          this.aKey[i] = '';
          this.aValue[i] = v;
          this.aTs[i] = ts;
        };
      }
      default:
        throw new PipelineDefinitionError(`internal: unexpected ${node.kind} node in a chain`);
    }
  }
}
