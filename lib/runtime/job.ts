/** What a worker or the local runner needs to run one job against any backend. */
import type {
  CheckpointStore,
  PipelinePlan,
  ShardSource,
  Sink,
  StartPosition,
  StateStore,
} from '../core/index.ts';

export interface JobRuntime {
  /** Job id: scopes state, checkpoints and output ids. */
  readonly job: string;
  readonly plan: PipelinePlan;
  readonly source: ShardSource;
  readonly backend: StateStore & CheckpointStore;
  /** Publishes committed outputs (idempotent by output id). */
  readonly sink: Sink;
  /** Where shards without a checkpoint start. @default TRIM_HORIZON */
  readonly startPosition?: StartPosition;
  /** Processing-time clock. @default Date.now */
  readonly clock?: () => number;
  /** The job record's say (savepoint pause, stop, newer generation), read between batches. */
  readonly control?: import('./job-control.ts').JobControl;
}

export interface WorkerOptions {
  /** Lease owner id (unique per invocation). */
  readonly owner: string;
  /** Stop after this much wall time (a Lambda's remaining time minus a margin). @default 60_000 */
  readonly timeBudgetMs?: number;
  /** Records per GetRecords call and batch. @default 1000 */
  readonly batchSize?: number;
  /**
   * Commit interval (wall ms): the reads of this long share one commit, as Flink's checkpoint
   * interval. Fewer commits write each changed key once per interval instead of once per read
   * (fewer state writes per event), but outputs are published after the commit, so they wait up
   * to this long, and a crash makes the worker read the interval's records again. A commit
   * always happens when the shard is caught up or ended and before the budget ends; a pause
   * (savepoint, stop) discards the uncommitted reads. 0: commit after every read. @default 0
   */
  readonly commitIntervalMs?: number;
  /** Commit once this many records are uncommitted, whatever the interval. @default 100_000 */
  readonly maxUncommittedRecords?: number;
  /**
   * Keys whose state each keyed operator keeps in memory (ShardTaskOptions.maxCachedKeys): after
   * a commit that leaves more, the least recently used are dropped and read again when needed.
   * Bounds a worker's memory on a shard with many keys. @default 100_000
   */
  readonly maxCachedKeys?: number;
  /**
   * Timer ops a checkpoint keeps inline before they are written as a timer chunk (the timer
   * log, docs/protocol.md). @default 256
   */
  readonly timerTailOps?: number;
  /** Lease time to live; renewed at half of it. @default 30_000 */
  readonly leaseTtlMs?: number;
  /** Return once the shard is caught up (no records and 0 ms behind latest). @default false */
  readonly untilIdle?: boolean;
  /** Pause between empty reads while caught up (a Kinesis shard allows 5 reads a second for all its consumers). @default 1000 */
  readonly idlePollMs?: number;
  /** Called after every commit. */
  readonly onCommit?: (progress: ShardProgress) => void;
  /**
   * Called before the worker processes the shard again from its last commit in the checked pass
   * (ShardTaskOptions.checked): a commit failed because an output or a state value is not JSON or
   * a state entry is larger than the store holds (a StateSerializationError), or a record failed
   * after reading state objects it may have changed in place (a RollbackNeedsReplayError). The
   * checked pass dead-letters such records (reason 'serialization', 'state-size' or that of the
   * failure) and leaves every other result as it would have been.
   */
  readonly onCheckedRetry?: (error: Error) => void;
  /** Stops the loop at the next batch boundary. */
  readonly signal?: AbortSignal;
  /** How often a worker reads the job control between batches (wall ms). @default 500 */
  readonly controlPollMs?: number;
  /**
   * Tasks kept between the invocations of this process (see warm-tasks.ts): an invocation whose
   * shard's stored checkpoint is the one a kept task committed goes on with it, without reading
   * state again. @default none: every invocation starts from the stored checkpoint
   */
  readonly warmTasks?: import('./warm-tasks.ts').WarmTasks;
  /**
   * Where the shard starts when it has no checkpoint of its own, for a worker that does not know
   * beforehand (a Lambda invocation names only its shard; see startOfShard in coordinator.ts).
   * Called at most once, under the lease, when the checkpoint read there finds none; it gives the
   * checkpoint a child shard inherits (undefined: the job's start position), or undefined when
   * the shard may not run yet: the worker then ends without processing (WorkerResult.notStarted).
   * Given, it takes the place of runShardWorker's `initial`. @default none: `initial`
   */
  readonly startOfShard?: () => Promise<
    { readonly initial: import('../core/index.ts').ShardCheckpoint | undefined } | undefined
  >;
}

export interface ShardProgress {
  readonly shardId: string;
  readonly position: string | undefined;
  readonly watermark: number;
  readonly millisBehindLatest: number;
  readonly records: number;
  readonly outputs: number;
  readonly deadLetters: number;
  readonly commitNumber: number;
}
