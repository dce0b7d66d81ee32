/**
 * Shard tasks kept between the invocations of one process: a warm Lambda container, or the
 * rounds of the local runner. An invocation that finds its shard's stored checkpoint equal to
 * the one a kept task last committed goes on with that task, and so with its cached state and
 * pending timers: it reads no state entries and no timer chunks again.
 *
 * Why this is exact: commit numbers of a shard only grow, and every commit is conditional on
 * the previous one, so an unchanged stored checkpoint means nobody committed since the task did,
 * and the stored state is what the task holds. A task is kept only after an invocation that
 * ended without an error at a commit boundary (nothing processed and uncommitted); a task is
 * taken out while an invocation uses it, so two invocations never share one.
 */
import {
  type PipelinePlan,
  type ShardCheckpoint,
  type ShardTask,
  serializeCheckpoint,
} from '../core/index.ts';

export interface WarmTasksOptions {
  /**
   * A task caching more keys than this is not kept (the memory it holds stays bounded; the
   * next invocation reads its state again). @default 100_000
   */
  readonly maxKeys?: number;
  /** Tasks kept at most; the least recently kept is dropped first. @default 64 */
  readonly maxTasks?: number;
}

export interface WarmTaskStats {
  /** Invocations that went on with a kept task. */
  hits: number;
  /** Kept tasks dropped because the stored checkpoint had moved on (another owner committed). */
  stale: number;
  /** Tasks not kept: too many cached keys. */
  tooLarge: number;
}

export class WarmTasks {
  private readonly tasks = new Map<string, { task: ShardTask; checkpoint: string }>();
  private readonly maxKeys: number;
  private readonly maxTasks: number;
  readonly stats: WarmTaskStats = { hits: 0, stale: 0, tooLarge: 0 };

  constructor(options: WarmTasksOptions = {}) {
    this.maxKeys = options.maxKeys ?? 100_000;
    this.maxTasks = options.maxTasks ?? 64;
  }

  /** Number of tasks kept now. */
  get size(): number {
    return this.tasks.size;
  }

  /**
   * The kept task of (job, shard), taken out, if it runs `plan` and last committed exactly
   * `stored`; otherwise undefined (and a stale task is dropped).
   */
  take(job: string, plan: PipelinePlan, stored: ShardCheckpoint): ShardTask | undefined {
    const key = slot(job, stored.shardId);
    const kept = this.tasks.get(key);
    if (kept === undefined) return undefined;
    this.tasks.delete(key);
    if (kept.task.plan !== plan || kept.checkpoint !== serializeCheckpoint(stored)) {
      this.stats.stale++;
      return undefined;
    }
    this.stats.hits++;
    return kept.task;
  }

  /**
   * Keeps `task` for the next invocation of its shard, if it is at a commit boundary, its shard
   * is not finished and it caches at most `maxKeys` keys. Returns whether it was kept.
   */
  keep(job: string, task: ShardTask): boolean {
    const checkpoint = task.committedCheckpoint;
    if (checkpoint === undefined || checkpoint.finished) return false;
    if (task.cachedKeys > this.maxKeys) {
      this.stats.tooLarge++;
      return false;
    }
    const key = slot(job, task.shardId);
    this.tasks.delete(key); // re-inserted last: the map's order is the keeping order
    this.tasks.set(key, { task, checkpoint: serializeCheckpoint(checkpoint) });
    for (const oldest of this.tasks.keys()) {
      if (this.tasks.size <= this.maxTasks) break;
      this.tasks.delete(oldest);
    }
    return true;
  }
}

const slot = (job: string, shardId: string): string => `${job}\u0000${shardId}`;
