/**
 * The shard worker: one invocation's work on one shard. Acquire the lease, publish anything a
 * crashed predecessor committed but did not publish, resume after the checkpoint, then loop
 * read -> process -> commit -> publish until the time budget ends, the shard ends, or (with
 * untilIdle) the shard is caught up. Every commit is conditional on the lease's fence. With a
 * commit interval, the reads of an interval are processed and then committed together.
 *
 * Pipelined: while batch n is processed and committed, batch n+1 is already being read (one read
 * ahead at most; none after a read that ended the shard or found it caught up), and batch n's
 * outputs are published while batch n+1 is read and processed; batch n+1 commits only after they
 * are published and marked, so per shard the outputs are published in commit order and the
 * outbox holds at most the last commit's outputs, as without pipelining. A read ahead is only
 * used when the loop goes on: after a failed commit or publish, a pause, an abort or the end of
 * the budget it is discarded (nothing was committed from it; the next invocation reads again
 * from the checkpoint). Errors propagate as without pipelining; the reader is closed after
 * whatever is in flight has settled, but a clean end returns without waiting for a discarded read
 * ahead. Reads are told the time left before the budget ends (ReadOptions.timeLeftMs), so that
 * throttling cannot hold a read, and the invocation, past it.
 */
import {
  type CheckpointStore,
  type Commit,
  ConfigurationError,
  depthOf,
  describeValue,
  type Lease,
  type Output,
  type ReadResult,
  RollbackNeedsReplayError,
  type ShardCheckpoint,
  ShardTask,
  type StartPosition,
  StateSerializationError,
  wholeNumberOption,
} from '../core/index.ts';
import type { JobRuntime, ShardProgress, WorkerOptions } from './job.ts';

export interface WorkerResult {
  readonly shardId: string;
  readonly records: number;
  readonly commits: number;
  readonly finished: boolean;
  readonly childShardIds: readonly string[];
  readonly caughtUp: boolean;
  /** Stopped at a commit boundary because the job control said so (savepoint, stop). */
  readonly paused?: boolean;
  /** Went on with the task a previous invocation kept (options.warmTasks): no state was reloaded. */
  readonly warm?: boolean;
  /**
   * Set by the Lambda handler when another invocation holds the shard: it held the lease at the
   * start ('lease-unavailable') or took it over ('fenced'). The counts are of the commits this
   * invocation published before.
   */
  readonly superseded?: 'fenced' | 'lease-unavailable';
  /**
   * The shard has no checkpoint and may not run yet (WorkerOptions.startOfShard: a parent shard is
   * not finished or has not published its last outputs, or the shard is not in the stream).
   */
  readonly notStarted?: true;
}

/** The result of an invocation that processed nothing of its shard (it did not run, or stopped at once). */
export function emptyWorkerResult(shardId: string): WorkerResult {
  return { shardId, records: 0, commits: 0, finished: false, childShardIds: [], caughtUp: false };
}

/** Minimum processing time between commits that only advance an idle shard's watermark. */
export const IDLE_COMMIT_INTERVAL_MS = 5_000;

/**
 * WorkerOptions.idlePollMs by default. A caught-up shard gains little from faster polls, and a Kinesis
 * shard's 5 reads a second are shared by all its consumers.
 */
export const DEFAULT_IDLE_POLL_MS = 1_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Publishes the outbox of a shard and marks it published (recovery after a crash). `checkpoint`:
 * the shard's stored one (the outbox's commit wrote it), whose depth the sink is given.
 */
export async function publishPending(
  backend: CheckpointStore,
  sink: JobRuntime['sink'],
  shardId: string,
  checkpoint: ShardCheckpoint | undefined,
): Promise<number> {
  const pending = await backend.unpublishedOutputs(shardId);
  if (pending.length === 0) return 0;
  await sink.publish(pending, checkpoint === undefined ? undefined : { depth: depthOf(checkpoint) });
  await backend.markPublished(
    shardId,
    pending.map((o) => o.id),
  );
  return pending.length;
}

/** WorkerOptions.maxCachedKeys by default: at a few hundred bytes per key, tens of MB. */
export const DEFAULT_MAX_CACHED_KEYS = 100_000;

export async function runShardWorker(
  job: JobRuntime,
  shardId: string,
  options: WorkerOptions,
  initial?: ShardCheckpoint,
): Promise<WorkerResult> {
  const clock = job.clock ?? Date.now;
  const ttl = options.leaseTtlMs ?? 30_000;
  const budget = options.timeBudgetMs ?? 60_000;
  const batchSize = options.batchSize ?? 1000;
  const commitIntervalMs = options.commitIntervalMs ?? 0;
  const maxUncommitted = options.maxUncommittedRecords ?? 100_000;
  const maxCachedKeys = options.maxCachedKeys ?? DEFAULT_MAX_CACHED_KEYS;
  if (!(Number.isFinite(commitIntervalMs) && commitIntervalMs >= 0)) {
    throw new ConfigurationError(
      `commitIntervalMs must be a number of milliseconds >= 0; received ${describeValue(options.commitIntervalMs)}`,
    );
  }
  wholeNumberOption('maxCachedKeys', maxCachedKeys);
  wholeNumberOption('maxUncommittedRecords', maxUncommitted);
  /** Wall time of the first read processed since the last commit. */
  let uncommittedSince: number | undefined;
  const started = clock();
  let lease: Lease = await job.backend.acquireLease(shardId, options.owner, started, ttl);
  let lastCommitAt = Number.NEGATIVE_INFINITY;
  let records = 0;
  let commits = 0;
  let caughtUp = false;
  let childShardIds: readonly string[] = [];
  // The job control is read at start and then at most every controlPollMs, between batches.
  const pollMs = options.controlPollMs ?? 500;
  let nextControlCheck = 0;
  /** WorkerOptions.startOfShard's answer, asked once (the checked pass may need it again). */
  let startOnce: ReturnType<NonNullable<WorkerOptions['startOfShard']>> | undefined;
  const mustPause = async (): Promise<boolean> => {
    if (job.control === undefined || Date.now() < nextControlCheck) return false;
    nextControlCheck = Date.now() + pollMs;
    return (await job.control.check()).action !== 'run';
  };
  /**
   * Runs the shard from its stored checkpoint. `checked`: in the checked pass
   * (ShardTaskOptions.checked), which checks every record's outputs and state as it goes.
   */
  const attempt = async (checked: boolean): Promise<WorkerResult> => {
    if (await mustPause()) {
      return { shardId, records, commits, finished: false, childShardIds, caughtUp: false, paused: true };
    }
    // Read under the lease (after acquireLease applied any pending delta): the one read of the
    // checkpoint this attempt starts from, and gives the outbox's publish the shard's depth.
    // Without one, the shard's start is worked out now.
    let checkpoint: ShardCheckpoint | undefined;
    try {
      checkpoint = await job.backend.readCheckpoint(shardId);
    } catch (error) {
      // The outbox holds committed outputs: deliver them even when the checkpoint cannot be
      // read (without the depth, an upsert sink orders them within their shard only).
      await publishPending(job.backend, job.sink, shardId, undefined);
      throw error;
    }
    await publishPending(job.backend, job.sink, shardId, checkpoint);
    if (checkpoint === undefined && options.startOfShard !== undefined) {
      startOnce ??= options.startOfShard();
      const start = await startOnce;
      if (start === undefined) return { ...emptyWorkerResult(shardId), records, commits, notStarted: true };
      checkpoint = start.initial;
    } else {
      checkpoint ??= initial;
    }
    if (checkpoint?.finished) {
      return { shardId, records, commits, finished: true, childShardIds, caughtUp: true };
    }
    const kept =
      checkpoint === undefined || checked
        ? undefined
        : options.warmTasks?.take(job.job, job.plan, checkpoint);
    const task =
      kept ??
      new ShardTask(job.plan, checkpoint ?? shardId, {
        job: job.job,
        maxCachedKeys,
        checked,
        ...(options.timerTailOps === undefined ? {} : { tailOps: options.timerTailOps }),
      });
    const position: StartPosition =
      checkpoint?.position !== undefined
        ? { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber: checkpoint.position }
        : (job.startPosition ?? { type: 'TRIM_HORIZON' });
    const reader = await job.source.openReader(shardId, position);
    // Reads end by the budget's end: a throttled read returns empty there instead of retrying past
    // it. The time left is passed, not the end's time, as the source's clock may not be the job's.
    const readBatch = (): Promise<ReadResult> =>
      reader.read(batchSize, { timeLeftMs: Math.max(0, started + budget - clock()) });
    let finished = false;
    let paused = false;
    let cleanEnd = false;
    // Pipelining (see the file comment): at most one read ahead and one publish in flight.
    let readAhead: Promise<Settled<ReadResult>> | undefined;
    let publishing: Promise<Settled<void>> | undefined;
    let publishFailed = false;
    const published = async (): Promise<void> => {
      const previous = publishing;
      publishing = undefined;
      if (previous !== undefined) unwrap(await previous);
    };
    let lastMillisBehind = 0;
    /** Ends the pending commit, commits it if it changed anything, and starts its publish. */
    const commitPending = async (millisBehindLatest: number): Promise<void> => {
      uncommittedSince = undefined;
      const result = task.takeCommit({
        // While idle, commit a watermark that only idleness moved at most every few seconds
        // (it is recomputed from the last commit after a restart).
        commitIdleWatermark: clock() - lastCommitAt >= IDLE_COMMIT_INTERVAL_MS,
      });
      if (!result.changed) return;
      // The previous commit's outputs are published before this one commits.
      await published();
      await job.backend.commit(lease, result);
      // A commit that landed as the lease ran out may already be another worker's to publish
      // (from the outbox, when it takes the shard over): publish only with at least half the
      // lease left, renewing it first if need be. A renewal is fenced, so a worker that was
      // taken over stops here, and that commit's outputs are published once, by the new owner.
      if (lease.expiresAt - clock() < ttl / 2) lease = await job.backend.renewLease(lease, clock(), ttl);
      lastCommitAt = clock();
      commits++;
      records += result.stats.records;
      const progressed = progress(shardId, result.checkpoint, millisBehindLatest, result);
      publishing = settle(publish(job, shardId, result).then(() => options.onCommit?.(progressed)));
      void publishing.then((outcome) => {
        if (!outcome.ok) publishFailed = true;
      });
    };
    try {
      while (!options.signal?.aborted && clock() - started < budget) {
        // A failed publish stops the loop at the next batch boundary, as it would unpipelined.
        if (publishFailed) await published();
        if (await mustPause()) {
          paused = true;
          break;
        }
        if (clock() - started > 0 && lease.expiresAt - clock() < ttl / 2) {
          lease = await job.backend.renewLease(lease, clock(), ttl);
        }
        const ahead = readAhead;
        readAhead = undefined;
        const read = ahead !== undefined ? unwrap(await ahead) : await readBatch();
        const idle = read.records.length === 0 && read.millisBehindLatest === 0;
        // Read the next batch while this one is processed, committed and published, unless this
        // read ended the shard or found it caught up (the loop stops or polls after a pause).
        if (!read.shardEnded && !idle && !options.signal?.aborted && clock() - started < budget) {
          readAhead = settle(readBatch());
        }
        const readAt = clock();
        lastMillisBehind = read.millisBehindLatest;
        await task.process(read.records, job.backend, readAt, {
          shardEnded: read.shardEnded,
          // An empty read is "caught up" only when nothing is left behind it.
          caughtUp: read.millisBehindLatest === 0,
        });
        uncommittedSince ??= readAt;
        const stopping =
          read.shardEnded || idle || options.signal?.aborted === true || clock() - started >= budget;
        const commitDue =
          stopping ||
          commitIntervalMs === 0 ||
          task.uncommittedRecords >= maxUncommitted ||
          (uncommittedSince !== undefined && clock() - uncommittedSince >= commitIntervalMs);
        if (commitDue) await commitPending(read.millisBehindLatest);
        if (read.shardEnded) {
          finished = true;
          childShardIds = read.childShardIds ?? [];
          break;
        }
        if (idle) {
          caughtUp = true;
          if (options.untilIdle) break;
          // Not past the budget's end: the loop would stop there anyway.
          const remaining = started + budget - clock();
          await sleep(Math.max(0, Math.min(options.idlePollMs ?? DEFAULT_IDLE_POLL_MS, remaining)));
        } else {
          caughtUp = false;
        }
      }
      // The loop ended at the budget or an abort between two reads of an interval: commit what
      // was processed (a pause instead leaves it, at the last commit boundary).
      if (!paused && uncommittedSince !== undefined) await commitPending(lastMillisBehind);
      await published();
      // Only after a clean end: a task that saw an error may hold changes nobody committed.
      // A checking task is not kept: it would check every record of later invocations too.
      if (!finished && !checked) options.warmTasks?.keep(job.job, task);
      cleanEnd = true;
    } finally {
      const discarded = readAhead;
      if (cleanEnd && discarded !== undefined) {
        // A clean end discards the read ahead (nothing of it is committed): do not wait for it,
        // a throttled read would hold the invocation. It cannot reject (settle); the reader is
        // closed once it has settled, and a failure to close is of no consequence then.
        void discarded.then(() => reader.close?.()).catch(() => {});
      } else {
        // On an error: let what is in flight settle (a publish's outcome is in the outbox; a read
        // ahead is discarded, the next invocation reads again from the committed checkpoint).
        await Promise.all([publishing, discarded]);
        await reader.close?.();
      }
    }
    return {
      shardId,
      records,
      commits,
      finished,
      childShardIds,
      caughtUp,
      warm: kept !== undefined,
      ...(paused ? { paused } : {}),
    };
  };
  try {
    try {
      return await attempt(false);
    } catch (error) {
      // A value that is not JSON (a BigInt, a cycle) or a state entry too large for the store
      // failed the commit, or a record failed after reading state objects it may have changed in
      // place: nothing of the pending batches is durable. Process them again from the last
      // commit in the checked pass, so such records go to the dead-letter output exactly and the
      // shard moves on instead of failing the same commit forever.
      if (!(error instanceof StateSerializationError || error instanceof RollbackNeedsReplayError))
        throw error;
      options.onCheckedRetry?.(error);
      return await attempt(true);
    }
  } finally {
    await job.backend.releaseLease(lease).catch(() => {});
  }
}

type Settled<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: unknown };

/** A promise that never rejects (so one left in flight is never an unhandled rejection). */
function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then(
    (value) => ({ ok: true, value }),
    (error: unknown) => ({ ok: false, error }),
  );
}

function unwrap<T>(settled: Settled<T>): T {
  if (!settled.ok) throw settled.error;
  return settled.value;
}

async function publish(job: JobRuntime, shardId: string, commit: Commit): Promise<void> {
  const { outputs } = commit;
  if (outputs.length === 0) return;
  await job.sink.publish(outputs, { depth: depthOf(commit.checkpoint) });
  await job.backend.markPublished(
    shardId,
    outputs.map((o) => o.id),
  );
}

function progress(
  shardId: string,
  checkpoint: ShardCheckpoint,
  millisBehindLatest: number,
  result: { outputs: readonly Output[]; stats: { records: number; deadLetters: number } },
): ShardProgress {
  return {
    shardId,
    position: checkpoint.position,
    watermark: checkpoint.watermark,
    millisBehindLatest,
    records: result.stats.records,
    outputs: result.outputs.length,
    deadLetters: result.stats.deadLetters,
    commitNumber: checkpoint.commitNumber,
  };
}
