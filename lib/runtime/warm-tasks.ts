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
  wholeNumberOption,
} from '../core/index.ts';
import { DEFAULT_MAX_CACHED_KEYS } from './worker.ts';

export interface WarmTasksOptions {
  /**
   * A task caching more keys than this (over all its operators) is not kept; the next
   * invocation of its shard reads its state again. @default 100_000
   */
  readonly maxKeys?: number;
  /**
   * Keys cached by all kept tasks together, at most, so the memory they hold stays bounded
   * however many shards a process serves (a Lambda container may run any shard of its job):
   * keeping a task drops the least recently kept ones until they fit. @default unbounded
   */
  readonly maxTotalKeys?: number;
  /** Tasks kept at most; the least recently kept is dropped first. @default 64 */
  readonly maxTasks?: number;
}

/**
 * Keys a shard's task caches at most when it runs `plan` with this per-operator cache limit
 * (WorkerOptions.maxCachedKeys): the limit a kept task must fit, so raising the cache limit, or
 * adding keyed operators, does not stop tasks from being kept.
 */
export function taskKeyLimit(plan: PipelinePlan, maxCachedKeys = DEFAULT_MAX_CACHED_KEYS): number {
  return maxCachedKeys * Math.max(1, plan.operators.length);
}

export interface WarmTaskStats {
  /** Invocations that went on with a kept task. */
  hits: number;
  /** Kept tasks dropped because the stored checkpoint had moved on (another owner committed). */
  stale: number;
  /** Tasks not kept: too many cached keys. */
  tooLarge: number;
  /** Kept tasks dropped to make room (maxTasks or maxTotalKeys) before their shard came back. */
  dropped: number;
}

export class WarmTasks {
  private readonly tasks = new Map<string, { task: ShardTask; checkpoint: string; keys: number }>();
  private readonly maxKeys: number;
  private readonly maxTotalKeys: number;
  private readonly maxTasks: number;
  /** Keys cached by the kept tasks (each counted when kept: a kept task does not change). */
  private keys = 0;
  readonly stats: WarmTaskStats = { hits: 0, stale: 0, tooLarge: 0, dropped: 0 };

  constructor(options: WarmTasksOptions = {}) {
    this.maxKeys = wholeNumberOption('warm tasks option maxKeys', options.maxKeys ?? 100_000);
    this.maxTotalKeys =
      options.maxTotalKeys === undefined
        ? Number.POSITIVE_INFINITY
        : wholeNumberOption('warm tasks option maxTotalKeys', options.maxTotalKeys);
    this.maxTasks = wholeNumberOption('warm tasks option maxTasks', options.maxTasks ?? 64);
  }

  /** Number of tasks kept now. */
  get size(): number {
    return this.tasks.size;
  }

  /** Keys cached by the tasks kept now. */
  get cachedKeys(): number {
    return this.keys;
  }

  /**
   * The kept task of (job, shard), taken out, if it runs `plan` and last committed exactly
   * `stored`; otherwise undefined (and a stale task is dropped).
   */
  take(job: string, plan: PipelinePlan, stored: ShardCheckpoint): ShardTask | undefined {
    const key = slot(job, stored.shardId);
    const kept = this.tasks.get(key);
    if (kept === undefined) return undefined;
    this.remove(key);
    if (kept.task.plan !== plan || kept.checkpoint !== serializeCheckpoint(stored)) {
      this.stats.stale++;
      return undefined;
    }
    this.stats.hits++;
    return kept.task;
  }

  /**
   * Keeps `task` for the next invocation of its shard, if it is at a commit boundary, its shard
   * is not finished and it caches at most `maxKeys` keys (dropping the least recently kept
   * tasks beyond `maxTasks` or `maxTotalKeys`). Returns whether it was kept.
   */
  keep(job: string, task: ShardTask): boolean {
    const checkpoint = task.committedCheckpoint;
    if (checkpoint === undefined || checkpoint.finished) return false;
    const keys = task.cachedKeys;
    const key = slot(job, task.shardId);
    this.remove(key); // re-inserted last: the map's order is the keeping order
    if (keys > this.maxKeys || keys > this.maxTotalKeys) {
      this.stats.tooLarge++;
      return false;
    }
    this.tasks.set(key, { task, checkpoint: serializeCheckpoint(checkpoint), keys });
    this.keys += keys;
    for (const oldest of this.tasks.keys()) {
      if (this.tasks.size <= this.maxTasks && this.keys <= this.maxTotalKeys) break;
      this.remove(oldest);
      this.stats.dropped++;
    }
    return true;
  }

  private remove(key: string): void {
    const kept = this.tasks.get(key);
    if (kept === undefined) return;
    this.tasks.delete(key);
    this.keys -= kept.keys;
  }
}

const slot = (job: string, shardId: string): string => `${job}\u0000${shardId}`;
