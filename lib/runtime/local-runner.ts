/**
 * The local runner: the coordinator and the shard workers in one process, against any
 * backend (embedded SQLite, emulators or AWS). It is what `floe run` and the integration
 * tests drive.
 */
import { FencedError, FloeError, type ShardCheckpoint } from '../core/index.ts';
import { runnableShards } from './coordinator.ts';
import type { JobRuntime, WorkerOptions } from './job.ts';
import { publishPending, runShardWorker, type WorkerResult } from './worker.ts';

export interface RunOptions extends Omit<WorkerOptions, 'owner' | 'untilIdle'> {
  /** Lease owner prefix. @default `local-<pid>` */
  readonly owner?: string;
  /** Stop when every shard is caught up (or finished). @default false: run until aborted */
  readonly untilIdle?: boolean;
  /** Pause between coordinator rounds when nothing is runnable or a lease is busy. @default 500 */
  readonly roundPauseMs?: number;
  /** Called when a shard's worker stopped on a retryable error or a lost lease (it is retried next round). */
  readonly onLeaseBusy?: (shardId: string, error: FloeError) => void;
}

export interface RunSummary {
  readonly records: number;
  readonly commits: number;
  readonly rounds: number;
  readonly shards: readonly string[];
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function runJob(job: JobRuntime, options: RunOptions = {}): Promise<RunSummary> {
  const owner = options.owner ?? `local-${process.pid}`;
  let records = 0;
  let commits = 0;
  let rounds = 0;
  const seen = new Set<string>();
  const flushed = new Set<string>();
  while (!options.signal?.aborted) {
    rounds++;
    const shards = await job.source.listShards();
    const checkpoints = new Map<string, ShardCheckpoint>(
      (await job.backend.listCheckpoints()).map((c) => [c.shardId, c]),
    );
    // A finished shard never runs again: publish what its last invocation committed but did
    // not publish. Once per runJob is enough (a later crash ends this runJob).
    for (const c of checkpoints.values()) {
      if (!c.finished || flushed.has(c.shardId)) continue;
      await publishPending(job.backend, job.sink, c.shardId);
      flushed.add(c.shardId);
    }
    const plans = runnableShards(shards, checkpoints);
    if (plans.length === 0) {
      if (options.untilIdle) break;
      await sleep(options.roundPauseMs ?? 500);
      continue;
    }
    let leaseBusy = false;
    const results: WorkerResult[] = await Promise.all(
      plans.map(async (plan) => {
        seen.add(plan.shard.shardId);
        try {
          return await runShardWorker(
            job,
            plan.shard.shardId,
            { ...options, owner: `${owner}-${plan.shard.shardId}`, untilIdle: options.untilIdle },
            plan.initial,
          );
        } catch (error) {
          // Another owner (or a crashed predecessor whose lease has not expired) holds the
          // shard, our lease was taken over, or the backend failed transiently after its own
          // retries: this invocation's work is abandoned and the shard resumes from its last
          // commit next round.
          const retry = error instanceof FloeError && (error.retryable || error instanceof FencedError);
          if (!retry) throw error;
          leaseBusy = true;
          options.onLeaseBusy?.(plan.shard.shardId, error as FloeError);
          return {
            shardId: plan.shard.shardId,
            records: 0,
            commits: 0,
            finished: false,
            childShardIds: [],
            caughtUp: false,
          };
        }
      }),
    );
    if (leaseBusy) await sleep(options.roundPauseMs ?? 500);
    let progressed = false;
    for (const r of results) {
      records += r.records;
      commits += r.commits;
      if (r.records > 0 || r.finished) progressed = true;
    }
    if (options.untilIdle && !leaseBusy && !progressed && results.every((r) => r.caughtUp || r.finished))
      break;
  }
  return { records, commits, rounds, shards: [...seen] };
}
