/**
 * A deterministic test driver (like Kafka Streams' TopologyTestDriver or Flink's operator test
 * harness): feed records to shards, advance watermarks and processing time, restart from the
 * serialized backend, and inspect outputs, state and timers. Every call is one committed batch.
 */
import type { ShardCheckpoint, TimerSpec } from '../checkpoint.ts';
import { compile, type PipelinePlan } from '../compile.ts';
import type { Pipeline } from '../dsl.ts';
import { ConfigurationError, describeValue, RollbackNeedsReplayError } from '../errors.ts';
import { MemoryBackend } from '../memory-backend.ts';
import { outputValueJson } from '../outputs.ts';
import { shardIndexFor, shardName } from '../partitioning.ts';
import type { Commit, Lease, Output, SourceRecord } from '../ports.ts';
import { type BatchResult, ShardTask } from '../shard-task.ts';
import type { StateKey } from '../state.ts';
import { type TimerLogOptions, withInlineTimers } from '../timer-log.ts';

export interface DriverRecord {
  readonly partitionKey: string;
  readonly data: unknown;
  /** Shard id; by default the shard owning the MD5 hash of the partition key. */
  readonly shard?: string;
  /** Arrival time (epoch ms); also advances processing time. @default the driver's processing time */
  readonly arrival?: number;
}

export interface TestDriverOptions {
  /** Number of shards (named like Kinesis shards). @default 1 */
  readonly shards?: number;
  /** Job id used in output ids. @default the pipeline name */
  readonly job?: string;
  /** Timer log limits (small ones make tests write, delete and compact timer chunks). */
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

export class TestDriver {
  readonly shardIds: string[];
  private backend = new MemoryBackend();
  private plan: PipelinePlan;
  private readonly tasks = new Map<string, { task: ShardTask; lease: Lease }>();
  private readonly published: Output[] = [];
  private readonly sequences = new Map<string, bigint>();
  private now = 0;

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

  /** Advances the watermark of one shard (or all) to at least `watermark`. */
  async advanceWatermark(watermark: number, shard?: string): Promise<void> {
    checkTime('advanceWatermark', watermark);
    for (const id of shard === undefined ? this.shardIds : [this.checkShard(shard)]) {
      await this.run(id, (task) => task.processWatermark(watermark, this.backend, this.now));
    }
  }

  /** Advances processing time: fires processing-time timers and idleness on every shard. */
  async advanceProcessingTime(now: number): Promise<void> {
    checkTime('advanceProcessingTime', now);
    this.now = Math.max(this.now, now);
    for (const id of this.shardIds) {
      await this.run(id, (task) => task.processBatch([], this.backend, this.now));
    }
  }

  /** Drops every in-memory object and continues from the serialized backend. */
  restart(): void {
    this.backend = MemoryBackend.deserialize(this.backend.serialize());
    this.tasks.clear();
    this.plan = compile(this.pipeline);
  }

  /** Published outputs, in emission order; optionally of one sink. */
  outputs(sink?: string): Output[] {
    return sink === undefined ? [...this.published] : this.published.filter((o) => o.sink === sink);
  }

  /** Values published to one sink, in emission order. */
  values<T = unknown>(sink: string): T[] {
    return this.outputs(sink).map((o) => o.value as T);
  }

  /** Committed state of one key of one operator (by uid, e.g. "window-0"). */
  async state(operatorUid: string, key: StateKey): Promise<Record<string, unknown> | undefined> {
    const address = `${operatorUid}/${JSON.stringify(key)}`;
    const text = (await this.backend.getMany([address])).get(address);
    return text === undefined ? undefined : (JSON.parse(text).s as Record<string, unknown>);
  }

  async checkpoint(shard: string = this.shardIds[0]!): Promise<ShardCheckpoint | undefined> {
    return this.backend.readCheckpoint(this.checkShard(shard));
  }

  /** Pending timers, in firing order: (time, key, namespace), then operator and domain. */
  async timers(shard: string = this.shardIds[0]!): Promise<readonly TimerSpec[]> {
    const checkpoint = await this.checkpoint(shard);
    if (checkpoint === undefined) return [];
    return (await withInlineTimers(checkpoint, this.backend)).timers;
  }

  async watermark(shard: string = this.shardIds[0]!): Promise<number> {
    return (await this.checkpoint(shard))?.watermark ?? Number.NEGATIVE_INFINITY;
  }

  /** The backend (for contract checks and inspection). */
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
