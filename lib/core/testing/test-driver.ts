/**
 * A deterministic test driver (like Kafka Streams' TopologyTestDriver or Flink's operator test
 * harness): feed records to shards, advance watermarks and processing time, restart from the
 * serialized backend, and inspect outputs, state and timers. Every call is one committed batch.
 * Users import it as `floe/testing` (package.json "exports"); see docs/dsl.md, "Testing a
 * pipeline (TestDriver)".
 */
import type { ShardCheckpoint, TimerSpec } from '../checkpoint.ts';
import { compile, type PipelinePlan } from '../compile.ts';
import type { Pipeline } from '../dsl.ts';
import { ConfigurationError, describeValue, RollbackNeedsReplayError } from '../errors.ts';
import { MemoryBackend } from '../memory-backend.ts';
import { outputValueJson } from '../outputs.ts';
import { shardIndexFor, shardName } from '../partitioning.ts';
import type { Commit, Lease, Output, SourceRecord } from '../ports.ts';
import { decodeSavedEntry, type OperatorSchema, operatorSchemas } from '../savepoint.ts';
import { type BatchResult, ShardTask } from '../shard-task.ts';
import type { StateKey } from '../state.ts';
import { type TimerLogOptions, withInlineTimers } from '../timer-log.ts';

/** One record given to {@link TestDriver.send}, as a Kinesis record would arrive. */
export interface DriverRecord {
  /** The Kinesis partition key: it picks the shard (unless `shard` is given); it is not the keyBy key. */
  readonly partitionKey: string;
  /**
   * The record's payload, exactly what the source's deserializer receives. With the default
   * `jsonDeserializer()` that is the record's bytes (a `Uint8Array` or `Buffer` of UTF-8 JSON) or
   * a JSON string, e.g. `JSON.stringify(event)`: anything else, a plain object included, is
   * dead-lettered with reason `deserialize` ("expected the record data as bytes or a JSON
   * string"). With `source({ deserializer: passthroughDeserializer() })` it is the element
   * itself, any value. The driver keeps it in memory as given (not serialized).
   */
  readonly data: unknown;
  /**
   * Shard id (one of {@link TestDriver.shardIds}); an unknown id throws a ConfigurationError.
   * @default the shard owning the MD5 hash of the partition key ({@link TestDriver.shardFor})
   */
  readonly shard?: string;
  /**
   * Arrival time in Kinesis (epoch ms): `ctx.timestamp` without `withTimestamps`, and the time
   * idleness is judged by. It also advances the driver's processing time to at least it
   * (processing time never goes back; an earlier arrival is kept as the record's own).
   * @default the driver's processing time
   */
  readonly arrival?: number;
}

/** Options of {@link TestDriver}. */
export interface TestDriverOptions {
  /**
   * Number of shards, 1 to 1024, named like Kinesis shards (`shardId-000000000000`, ...) and
   * owning equal MD5 hash-key ranges. @default 1
   */
  readonly shards?: number;
  /** Job id, the first part of output ids (`<job>/<shard>/<commit>/<index>`). @default the pipeline name */
  readonly job?: string;
  /**
   * Timer log limits (small ones make tests write, delete and compact timer chunks).
   * @default the shard task's defaults
   */
  readonly timerLog?: TimerLogOptions;
  /**
   * Called with every commit before it is stored; throwing fails it, and nothing of it is
   * stored (floe simulate checks co-partitioning here, as the local runner does).
   */
  readonly beforeCommit?: (shardId: string, commit: Commit) => void;
}

const LEASE_TTL = 2 ** 40;

/** A time the driver is given: a number, not NaN (a string or NaN would stall watermarks or the clock). */
function checkTime(what: string, value: unknown): void {
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new ConfigurationError(
      `${what} needs a time in epoch milliseconds (a number, or ±Infinity); received ${describeValue(value)}`,
    );
  }
}

/**
 * Runs a pipeline in memory, one call at a time, each call ending in commits to an in-memory
 * backend exactly as a worker commits. Processing time starts at 0 and only moves when told
 * (`arrival`, {@link TestDriver.advanceProcessingTime}); nothing depends on the wall clock.
 *
 * ```ts
 * const driver = new TestDriver(pipeline);
 * await driver.send([{ partitionKey: 'card-1', data: JSON.stringify(use) }]);
 * await driver.advanceWatermark(minutes(10));
 * driver.restart();
 * expect(driver.values('alerts')).toEqual([...]);
 * ```
 */
export class TestDriver {
  /** The shard ids, in hash-key order (`shardId-000000000000`, ...). */
  readonly shardIds: string[];
  private backend = new MemoryBackend();
  private plan: PipelinePlan;
  private readonly schemas: ReadonlyMap<string, OperatorSchema>;
  private readonly tasks = new Map<string, { task: ShardTask; lease: Lease }>();
  private readonly published: Output[] = [];
  private readonly sequences = new Map<string, bigint>();
  private now = 0;

  /**
   * Compiles the pipeline (a PipelineDefinitionError if it is invalid).
   * @throws ConfigurationError when `options.shards` is not a whole number from 1 to 1024
   */
  constructor(
    private readonly pipeline: Pipeline,
    private readonly options: TestDriverOptions = {},
  ) {
    const shards = options.shards ?? 1;
    if (!Number.isInteger(shards) || shards < 1 || shards > 1024) {
      throw new ConfigurationError(
        `shards must be a whole number from 1 to 1024; received ${describeValue(shards)}`,
      );
    }
    this.shardIds = Array.from({ length: shards }, (_, i) => shardName(i));
    this.plan = compile(pipeline);
    this.schemas = new Map(operatorSchemas(this.plan).map((o) => [o.uid, o]));
  }

  /** The shard a partition key maps to (MD5 hash ranges, like Kinesis). */
  shardFor(partitionKey: string): string {
    return this.shardIds[shardIndexFor(partitionKey, this.shardIds.length)]!;
  }

  /**
   * Sends records. Consecutive records of one shard form one batch (one commit). A record whose
   * arrival advances processing time starts a new read within it: each read is processed at its
   * own processing time (ShardTask.process), so no record is processed at a later record's
   * arrival (state TTL, processing-time timers, ctx.currentProcessingTime).
   */
  async send(records: readonly DriverRecord[]): Promise<void> {
    if (!Array.isArray(records)) {
      throw new ConfigurationError(
        `send needs an array of records { partitionKey, data, shard?, arrival? }; received ${describeValue(records)}`,
      );
    }
    for (const r of records) if (r.arrival !== undefined) checkTime("a record's arrival", r.arrival);
    let i = 0;
    while (i < records.length) {
      const shard = this.resolveShard(records[i]!);
      const reads: Array<{ records: SourceRecord[]; now: number }> = [];
      while (i < records.length && this.resolveShard(records[i]!) === shard) {
        const r = records[i]!;
        if (r.arrival !== undefined && r.arrival > this.now) this.now = r.arrival;
        let read = reads.at(-1);
        if (read === undefined || read.now !== this.now) {
          read = { records: [], now: this.now };
          reads.push(read);
        }
        read.records.push({
          data: r.data,
          partitionKey: r.partitionKey,
          arrivalTime: r.arrival ?? this.now,
          sequenceNumber: this.nextSequence(shard),
        });
        i++;
      }
      await this.run(shard, async (task) => {
        for (const read of reads) await task.process(read.records, this.backend, read.now);
        return task.takeCommit();
      });
    }
  }

  /**
   * Advances the watermark of one shard (or of every shard, one commit each) to at least
   * `watermark`, firing the event-time timers it reaches (window results included), as a
   * watermark from the stream would. A lower watermark changes nothing: watermarks never regress.
   * @param shard - a shard id; every shard by default
   */
  async advanceWatermark(watermark: number, shard?: string): Promise<void> {
    checkTime('advanceWatermark', watermark);
    for (const id of shard === undefined ? this.shardIds : [this.checkShard(shard)]) {
      await this.run(id, (task) => task.processWatermark(watermark, this.backend, this.now));
    }
  }

  /**
   * Advances processing time to at least `now` (it starts at 0 and never goes back) and runs
   * an empty batch on every shard, as a caught-up worker polling would: processing-time timers
   * due by `now` fire, and `withIdleness` watermarks advance.
   */
  async advanceProcessingTime(now: number): Promise<void> {
    checkTime('advanceProcessingTime', now);
    this.now = Math.max(this.now, now);
    for (const id of this.shardIds) {
      await this.run(id, (task) => task.processBatch([], this.backend, this.now));
    }
  }

  /**
   * A worker restart: drops every in-memory object (shard tasks, their state caches and timer
   * queues, the compiled pipeline) and continues from the backend's serialized form, as a new
   * worker continues from the last commit. Every call has committed, so nothing is replayed:
   * a pipeline whose results change across `restart()` keeps something outside its state.
   * Published outputs, processing time and sequence numbers carry on.
   */
  restart(): void {
    this.backend = MemoryBackend.deserialize(this.backend.serialize());
    this.tasks.clear();
    this.plan = compile(this.pipeline);
  }

  /**
   * Published outputs `{ id, sink, value }`, in emission order; optionally of one sink
   * (`'floe.dead-letter'`, `'floe.late'` included). Values are read back from their JSON, as a
   * durable backend stores them (a `Date` becomes its string).
   */
  outputs(sink?: string): Output[] {
    return sink === undefined ? [...this.published] : this.published.filter((o) => o.sink === sink);
  }

  /** The values published to one sink, in emission order (`outputs(sink)` without ids). */
  values<T = unknown>(sink: string): T[] {
    return this.outputs(sink).map((o) => o.value as T);
  }

  /**
   * The committed state of one key of one operator (by uid: `.uid(id)`, or `window-0`,
   * `process-0`, ... in definition order) in its stored form, `{ <state name>: <cell> }`: a
   * value state is `[value]`, `[value, write time]` with a TTL; a map state is `[[mapKey, value],
   * ...]`, with the write time as third item with a TTL; a list state is `[item, ...]`,
   * `[[item, write time], ...]` with a TTL. A window operator's accumulators are its map state
   * `w` (`{"w": [[windowStart, acc]]}`; sessions: `[[start, [end, acc]]]`). For the values a
   * process function reads, use {@link stateValues}.
   * @returns undefined when the key has no stored state in the operator
   */
  async state(operatorUid: string, key: StateKey): Promise<Record<string, unknown> | undefined> {
    const address = `${operatorUid}/${JSON.stringify(key)}`;
    const text = (await this.backend.getMany([address])).get(address);
    return text === undefined ? undefined : (JSON.parse(text).s as Record<string, unknown>);
  }

  /**
   * The committed state of one key of one operator as values, `{ <state name>: value }`, as a
   * savepoint migration receives them (`SavedStateEntry.state`): a value state's value, a map
   * state's `[[mapKey, value], ...]` pairs, a list state's items; TTL write times are left
   * out. A window operator's `w` is `[[windowStart, acc], ...]` (sessions: `[start, [end, acc]]`
   * pairs). Only states holding something appear. TTL applies when state is read or written,
   * not here: a value whose TTL has expired but whose key has not been written since is still
   * stored, and listed (a process function reads it as absent; the key's next write drops it).
   * `state()` shows the write times.
   * @returns undefined when the key has no stored state in the operator
   * @throws ConfigurationError when the pipeline has no keyed operator `operatorUid`
   */
  async stateValues(operatorUid: string, key: StateKey): Promise<Record<string, unknown> | undefined> {
    if (!this.schemas.has(operatorUid)) {
      throw new ConfigurationError(
        `pipeline "${this.plan.name}" has no keyed operator with uid ${describeValue(operatorUid)} (operators: ${[...this.schemas.keys()].join(', ') || 'none'})`,
      );
    }
    const address = `${operatorUid}/${JSON.stringify(key)}`;
    const text = (await this.backend.getMany([address])).get(address);
    return text === undefined ? undefined : decodeSavedEntry(address, text, this.schemas).state;
  }

  /**
   * The last committed checkpoint of a shard (position, commit number, watermark, ...), or
   * undefined before its first commit. Its timers may be partly in timer-log chunks: use
   * {@link timers} for the pending timers.
   * @param shard - a shard id; the first shard by default
   */
  async checkpoint(shard: string = this.shardIds[0]!): Promise<ShardCheckpoint | undefined> {
    return this.backend.readCheckpoint(this.checkShard(shard));
  }

  /**
   * The pending timers of a shard, event- and processing-time, of every operator, sorted by
   * (time, key, namespace), then operator uid, then domain. Within one domain that is the order
   * they fire in, except among operators: timers of several operators at the same (time, key,
   * namespace) fire in the order the operators are defined in the pipeline, not by uid.
   * @param shard - a shard id; the first shard by default
   */
  async timers(shard: string = this.shardIds[0]!): Promise<readonly TimerSpec[]> {
    const checkpoint = await this.checkpoint(shard);
    if (checkpoint === undefined) return [];
    return (await withInlineTimers(checkpoint, this.backend)).timers;
  }

  /**
   * The committed watermark of a shard.
   * @param shard - a shard id; the first shard by default
   * @returns -Infinity before the shard's first watermark
   */
  async watermark(shard: string = this.shardIds[0]!): Promise<number> {
    return (await this.checkpoint(shard))?.watermark ?? Number.NEGATIVE_INFINITY;
  }

  /**
   * The in-memory backend holding the commits (for contract checks and inspection); `restart()`
   * replaces it.
   */
  get store(): MemoryBackend {
    return this.backend;
  }

  private resolveShard(r: DriverRecord): string {
    return r.shard === undefined ? this.shardFor(r.partitionKey) : this.checkShard(r.shard);
  }

  private checkShard(shard: string): string {
    if (!this.shardIds.includes(shard)) {
      throw new ConfigurationError(
        `unknown shard ${describeValue(shard)}; shards are ${this.shardIds.join(', ')}`,
      );
    }
    return shard;
  }

  private nextSequence(shard: string): string {
    const next = (this.sequences.get(shard) ?? 0n) + 1n;
    this.sequences.set(shard, next);
    return next.toString();
  }

  /**
   * Runs one batch's work on the shard's task and commits it. When a record fails after reading
   * state objects (RollbackNeedsReplayError), the task's state is not exact: as the shard worker
   * does, the batch runs again from the last commit in the checked pass, and the next batch
   * starts from the committed state (a checked task is not kept).
   */
  private async run(shard: string, work: (task: ShardTask) => Promise<BatchResult>): Promise<void> {
    const { task, lease } = await this.task(shard);
    let result: BatchResult;
    try {
      result = await work(task);
    } catch (error) {
      if (!(error instanceof RollbackNeedsReplayError)) throw error;
      this.tasks.delete(shard);
      result = await work(this.newTask((await this.backend.readCheckpoint(shard)) ?? shard, true));
    }
    await this.commit(shard, lease, result);
  }

  private async task(shard: string): Promise<{ task: ShardTask; lease: Lease }> {
    let entry = this.tasks.get(shard);
    if (entry === undefined) {
      const lease = await this.backend.acquireLease(shard, 'test-driver', 0, LEASE_TTL);
      const checkpoint = (await this.backend.readCheckpoint(shard)) ?? shard;
      entry = { task: this.newTask(checkpoint, false), lease };
      this.tasks.set(shard, entry);
    }
    return entry;
  }

  private newTask(checkpoint: ShardCheckpoint | string, checked: boolean): ShardTask {
    return new ShardTask(this.plan, checkpoint, { job: this.options.job, ...this.options.timerLog, checked });
  }

  private async commit(shard: string, lease: Lease, result: BatchResult): Promise<void> {
    if (!result.changed) return;
    this.options.beforeCommit?.(shard, result);
    // Outputs as a durable backend stores them, as JSON: a value JSON cannot hold (a BigInt, a
    // cycle) fails the commit before anything of it is stored, as in production, and a Date
    // is published as its string.
    const texts = new Map(result.outputs.map((o) => [o.id, outputValueJson(o)]));
    await this.backend.commit(lease, result);
    // Publish from the outbox, as a worker does after its commit.
    const pending = await this.backend.unpublishedOutputs(shard);
    for (const o of pending) {
      const text = texts.has(o.id) ? texts.get(o.id) : outputValueJson(o);
      this.published.push({ ...o, value: text === undefined ? undefined : JSON.parse(text) });
    }
    await this.backend.markPublished(
      shard,
      pending.map((o) => o.id),
    );
  }
}
