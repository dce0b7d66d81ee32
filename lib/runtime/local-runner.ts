/**
 * The local runner: the coordinator and the shard workers in one process, against any
 * backend (embedded SQLite, emulators or AWS). It is what `floe run` and the integration
 * tests drive.
 */
import { type Commit, FencedError, FloeError, type Lease } from '../core/index.ts';
import { CoPartitioningCheck } from './co-partitioning.ts';
import { runnableShards, shardsAndCheckpoints } from './coordinator.ts';
import type { JobRuntime, ShardProgress, WorkerOptions } from './job.ts';
import { taskKeyLimit, WarmTasks } from './warm-tasks.ts';
import { emptyWorkerResult, publishPending, runShardWorker, type WorkerResult } from './worker.ts';

export interface RunOptions extends Omit<WorkerOptions, 'owner' | 'untilIdle'> {
  /** Lease owner prefix. @default `local-<pid>` */
  readonly owner?: string;
  /** Stop when every shard is caught up (or finished). @default false: run until aborted */
  readonly untilIdle?: boolean;
  /** Pause between coordinator rounds when nothing is runnable or a lease is busy. @default 500 */
  readonly roundPauseMs?: number;
  /** Called when a shard's worker stopped on a retryable error or a lost lease (it is retried next round). */
  readonly onLeaseBusy?: (shardId: string, error: FloeError) => void;
  /** Called while the job control pauses the job (a savepoint is being taken). */
  readonly onPaused?: (reason: string) => void;
  /**
   * Tasks kept between rounds (see warm-tasks.ts). @default a new WarmTasks for this run, keeping
   * tasks that cache up to maxCachedKeys per keyed operator: a shard's next round goes on with
   * its task unless another owner committed in between
   */
  readonly warmTasks?: WarmTasks;
}

export interface RunSummary {
  readonly records: number;
  readonly commits: number;
  readonly rounds: number;
  readonly shards: readonly string[];
  /** Set when the job control stopped the run (job stopped, or restored into another generation). */
  readonly stopped?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function runJob(job: JobRuntime, options: RunOptions = {}): Promise<RunSummary> {
  const owner = options.owner ?? `local-${process.pid}`;
  // Every shard runs in this process at once, so only each task's own cache is bounded.
  const warmTasks =
    options.warmTasks ?? new WarmTasks({ maxKeys: taskKeyLimit(job.plan, options.maxCachedKeys) });
  // Every shard runs here, so keyed state written by two unrelated shards can be caught.
  const coPartitioning = new CoPartitioningCheck();
  const checked: JobRuntime = { ...job, backend: checkedBackend(job.backend, coPartitioning) };
  let records = 0;
  let commits = 0;
  let rounds = 0;
  const seen = new Set<string>();
  const flushed = new Set<string>();
  let stopped: string | undefined;
  while (!options.signal?.aborted) {
    const decision = await job.control?.check();
    if (decision?.action === 'stop') {
      stopped = decision.reason;
      break;
    }
    if (decision?.action === 'pause') {
      options.onPaused?.(decision.reason);
      await sleep(options.roundPauseMs ?? 500);
      continue;
    }
    rounds++;
    const { shards, checkpoints } = await shardsAndCheckpoints(job);
    coPartitioning.lineage(shards);
    // A finished shard never runs again: publish what its last invocation committed but did
    // not publish. Once per runJob is enough (a later crash ends this runJob).
    for (const c of checkpoints.values()) {
      if (!c.finished || flushed.has(c.shardId)) continue;
      await publishPending(job.backend, job.sink, c.shardId, c);
      flushed.add(c.shardId);
    }
    const plans = runnableShards(shards, checkpoints);
    if (plans.length === 0) {
      if (options.untilIdle) break;
      await sleep(options.roundPauseMs ?? 500);
      continue;
    }
    let leaseBusy = false;
    // A worker failing for good stops the round's other workers at their next batch boundary
    // (they commit what they processed and release their leases) before runJob throws: else
    // they would run on after it, against a backend its caller closes, and keep their leases.
    const round = new AbortController();
    const abortRound = (): void => round.abort();
    options.signal?.addEventListener('abort', abortRound, { once: true });
    if (options.signal?.aborted) round.abort();
    const settled = await Promise.allSettled(
      plans.map(async (plan) => {
        seen.add(plan.shard.shardId);
        // What the worker committed and published, for when it ends in an error below: its result,
        // with its counts, is lost with it, yet those commits stand.
        const committed = { records: 0, commits: 0 };
        const onCommit = (progress: ShardProgress): void => {
          committed.records += progress.records;
          committed.commits++;
          options.onCommit?.(progress);
        };
        try {
          return await runShardWorker(
            checked,
            plan.shard.shardId,
            {
              ...options,
              owner: `${owner}-${plan.shard.shardId}`,
              untilIdle: options.untilIdle,
              warmTasks,
              onCommit,
              signal: round.signal,
            },
            plan.initial,
          );
        } catch (error) {
          // Another owner (or a crashed predecessor whose lease has not expired) holds the
          // shard, our lease was taken over, or the backend failed transiently after its own
          // retries: this invocation's work is abandoned and the shard resumes from its last
          // commit next round.
          const retry = error instanceof FloeError && (error.retryable || error instanceof FencedError);
          if (!retry) {
            round.abort();
            throw error;
          }
          leaseBusy = true;
          options.onLeaseBusy?.(plan.shard.shardId, error as FloeError);
          return { ...emptyWorkerResult(plan.shard.shardId), ...committed };
        }
      }),
    );
    options.signal?.removeEventListener('abort', abortRound);
    const failed = settled.find((s) => s.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    const results = settled.map((s) => (s as PromiseFulfilledResult<WorkerResult>).value);
    if (leaseBusy) await sleep(options.roundPauseMs ?? 500);
    let paused = false;
    for (const r of results) {
      if (r.paused) paused = true;
      records += r.records;
      commits += r.commits;
    }
    // Idle: every shard that ran is caught up, and none finished (a finished shard makes its
    // children runnable, so they get a round). Shards that did not run are finished already.
    if (options.untilIdle && !leaseBusy && !paused && results.every((r) => r.caughtUp && !r.finished)) break;
  }
  return { records, commits, rounds, shards: [...seen], ...(stopped === undefined ? {} : { stopped }) };
}

/** The backend, with every commit checked for co-partitioning first. */
function checkedBackend(backend: JobRuntime['backend'], check: CoPartitioningCheck): JobRuntime['backend'] {
  const commit = async (lease: Lease, c: Commit): Promise<void> => {
    check.check(lease.shardId, c.mutations);
    await backend.commit(lease, c);
  };
  return new Proxy(backend, {
    get(target, property) {
      if (property === 'commit') return commit;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}
