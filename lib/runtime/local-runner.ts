/**
 * The local runner: the coordinator and the shard workers in one process, against any
 * backend (embedded SQLite, emulators or AWS). It is what `floe run` and the integration
 * tests drive.
 */
import type { ShardCheckpoint } from '../core/index.ts';
import { runnableShards } from './coordinator.ts';
import type { JobRuntime, WorkerOptions } from './job.ts';
import { publishPending, runShardWorker, type WorkerResult } from './worker.ts';

export interface RunOptions extends Omit<WorkerOptions, 'owner' | 'untilIdle'> {
  /** Lease owner prefix. @default `local-<pid>` */
  readonly owner?: string;
  /** Stop when every shard is caught up (or finished). @default false: run until aborted */
  readonly untilIdle?: boolean;
  /** Pause between coordinator rounds when nothing is runnable. @default 500 */
  readonly roundPauseMs?: number;
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
    const results: WorkerResult[] = await Promise.all(
      plans.map((plan) => {
        seen.add(plan.shard.shardId);
        return runShardWorker(
          job,
          plan.shard.shardId,
          { ...options, owner: `${owner}-${plan.shard.shardId}`, untilIdle: options.untilIdle },
          plan.initial,
        );
      }),
    );
    let progressed = false;
    for (const r of results) {
      records += r.records;
      commits += r.commits;
      if (r.records > 0 || r.finished) progressed = true;
    }
    if (options.untilIdle && !progressed && results.every((r) => r.caughtUp || r.finished)) break;
  }
  return { records, commits, rounds, shards: [...seen] };
}
