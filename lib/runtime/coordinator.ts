/**
 * Coordinator logic: which shards may run now, and the checkpoint a child shard starts from.
 * Children of a reshard start only after all their parents are finished, so every key's
 * events are processed in order; they inherit their parents' event time and timers.
 */
import {
  depthOf,
  hashKey,
  initialCheckpoint,
  type ShardCheckpoint,
  type ShardInfo,
  type TimerSpec,
  withInlineTimers,
} from '../core/index.ts';

export interface ShardPlan {
  readonly shard: ShardInfo;
  /** The checkpoint to start from when the shard has none yet (children inherit). */
  readonly initial: ShardCheckpoint | undefined;
}

/**
 * Shards that can run: not finished, and every parent finished (or gone from the stream,
 * i.e. trimmed after retention). Parents come before children in the result.
 */
export function runnableShards(
  shards: readonly ShardInfo[],
  checkpoints: ReadonlyMap<string, ShardCheckpoint>,
): ShardPlan[] {
  const listed = new Map(shards.map((s) => [s.shardId, s]));
  const finished = (id: string): boolean => checkpoints.get(id)?.finished === true || !listed.has(id);
  const plans: ShardPlan[] = [];
  for (const shard of shards) {
    if (checkpoints.get(shard.shardId)?.finished) continue;
    if (!shard.parentShardIds.every(finished)) continue;
    const own = checkpoints.get(shard.shardId);
    const parents = shard.parentShardIds
      .map((id) => checkpoints.get(id))
      .filter((c): c is ShardCheckpoint => c !== undefined);
    plans.push({
      shard,
      initial: own === undefined && parents.length > 0 ? childCheckpoint(shard, parents, shards) : undefined,
    });
  }
  return plans;
}

/**
 * The starting checkpoint of a child shard. Event time continues from the slowest parent
 * (so nothing that was on time becomes late); timers move to the child whose hash-key range
 * owns the timer's key (keys are Kinesis partition keys, see docs/dsl.md "Keys and shards").
 */
export function childCheckpoint(
  child: ShardInfo,
  parents: readonly ShardCheckpoint[],
  allShards: readonly ShardInfo[],
): ShardCheckpoint {
  const base = initialCheckpoint(child.shardId);
  const siblings = allShards.filter((s) => s.parentShardIds.some((p) => child.parentShardIds.includes(p)));
  const start = BigInt(child.hashKeyRange.start);
  const end = BigInt(child.hashKeyRange.end);
  const owns = (timer: TimerSpec): boolean => {
    if (siblings.length <= 1) return true;
    const h = hashKey(String(timer.key));
    if (h >= start && h <= end) return true;
    // A key outside every sibling's range was not co-partitioned: keep it on the first child.
    const ownedBySibling = siblings.some(
      (s) => h >= BigInt(s.hashKeyRange.start) && h <= BigInt(s.hashKeyRange.end),
    );
    return !ownedBySibling && siblings[0]!.shardId === child.shardId;
  };
  // Event time continues from the parents that saw elements: one that never did (a cold shard
  // merged away) has nothing on time to protect, and its -Infinity would stop idleness.
  const timed = parents.filter((p) => p.maxTimestamp !== Number.NEGATIVE_INFINITY);
  const from = timed.length > 0 ? timed : parents;
  // Idleness needs a last record time: continue from the parents' latest.
  const recordTimes = parents.flatMap((p) => (p.lastRecordAt === undefined ? [] : [p.lastRecordAt]));
  // A finished shard's last commit puts every timer inline (timer-log.ts), and an unfinished
  // parent trimmed from the stream has them put inline by shardsAndCheckpoints: all are here.
  const logged = parents.find((p) => p.timerLog !== undefined);
  if (logged !== undefined) {
    throw new Error(`internal: parent shard ${logged.shardId} finished with timers in its timer log`);
  }
  return {
    ...base,
    watermark: Math.min(...from.map((p) => p.watermark)),
    maxTimestamp: Math.min(...from.map((p) => p.maxTimestamp)),
    lastRecordAt: recordTimes.length > 0 ? Math.max(...recordTimes) : undefined,
    timers: parents.flatMap((p) => p.timers).filter(owns),
    // Deeper than every parent, so its state writes win over a stalled parent's (protocol.md).
    depth: Math.max(0, ...parents.map(depthOf)) + 1,
  };
}

/** The stream's shards and the job's checkpoints by shard: what runnableShards decides from. */
export async function shardsAndCheckpoints(
  job: Pick<import('./job.ts').JobRuntime, 'source' | 'backend'>,
): Promise<{ shards: ShardInfo[]; checkpoints: Map<string, ShardCheckpoint> }> {
  const shards = await job.source.listShards();
  const checkpoints = new Map((await job.backend.listCheckpoints()).map((c) => [c.shardId, c]));
  const listed = new Set(shards.map((s) => s.shardId));
  for (const [shardId, checkpoint] of checkpoints) {
    // A parent trimmed from the stream (retention) before it finished counts as finished
    // (runnableShards), and its children inherit its pending timers, which its timer log may
    // hold in chunks: only a finished shard's last commit puts them all inline.
    if (!checkpoint.finished && !listed.has(shardId) && checkpoint.timerLog !== undefined) {
      checkpoints.set(shardId, await withInlineTimers(checkpoint, job.backend));
    }
  }
  return { shards, checkpoints };
}

export interface CoordinatorDeps {
  /** True while some worker holds a live lease on the shard. */
  readonly isLeaseLive: (shardId: string) => Promise<boolean>;
  /**
   * Starts a worker for the shard (e.g. an asynchronous Lambda invocation). `initial` is the
   * checkpoint a child shard inherits, for in-process workers; a Lambda worker works it out
   * itself (startOfShard), as its parents' timers can exceed an invocation's payload.
   */
  readonly startWorker: (shardId: string, initial: ShardCheckpoint | undefined) => Promise<void>;
}

export interface CoordinatorRound {
  /** Shards a worker was started for (unfinished ones, and finished ones with an outbox left). */
  readonly started: string[];
  /** Shards a live lease holds. */
  readonly running: string[];
  readonly finished: string[];
  /** Shards whose worker could not be started; the others were started all the same. */
  readonly failed: Array<{ readonly shardId: string; readonly error: unknown }>;
}

/**
 * One coordinator round: start a worker for every runnable shard (parents before children) that
 * no worker holds, and for every finished shard whose outbox still holds outputs (its last
 * worker stopped between its commit and its publish): that worker publishes them under the
 * shard's lease and ends, so the coordinator itself writes to no sink. A shard whose worker
 * fails to start does not keep the others from starting.
 */
export async function coordinateRound(
  job: Pick<import('./job.ts').JobRuntime, 'source' | 'backend'>,
  deps: CoordinatorDeps,
): Promise<CoordinatorRound> {
  const { shards, checkpoints } = await shardsAndCheckpoints(job);
  const round: CoordinatorRound = { started: [], running: [], finished: [], failed: [] };
  const start = async (shardId: string, initial: ShardCheckpoint | undefined): Promise<void> => {
    if (await deps.isLeaseLive(shardId)) {
      round.running.push(shardId);
      return;
    }
    try {
      await deps.startWorker(shardId, initial);
      round.started.push(shardId);
    } catch (error) {
      round.failed.push({ shardId, error });
    }
  };
  const unpublished = new Set<string>();
  for (const c of checkpoints.values()) {
    if (!c.finished) continue;
    round.finished.push(c.shardId);
    if ((await job.backend.unpublishedOutputs(c.shardId)).length > 0) {
      unpublished.add(c.shardId);
      await start(c.shardId, undefined);
    }
  }
  for (const plan of runnableShards(shards, checkpoints)) {
    if (waitsForParentOutputs(plan.shard, unpublished)) continue;
    await start(plan.shard.shardId, plan.initial);
  }
  return round;
}

/**
 * A child of a reshard starts only once its parents' last outputs are published (a later round):
 * an upsert sink orders a key's writes within one shard only, so a parent's older output for a
 * key, published after the child's newer one, would replace it.
 */
function waitsForParentOutputs(shard: ShardInfo, unpublished: ReadonlySet<string>): boolean {
  return shard.parentShardIds.some((id) => unpublished.has(id));
}

/**
 * Where a worker of `shardId` starts when the shard has no checkpoint of its own: `initial` is
 * the checkpoint a child of a reshard inherits from its parents (undefined for a shard without
 * parents, which starts at the job's start position). Undefined when the shard may not run yet
 * (a parent is not finished, or its last outputs are not published yet) or is not in the stream.
 */
export async function startOfShard(
  job: Pick<import('./job.ts').JobRuntime, 'source' | 'backend'>,
  shardId: string,
): Promise<{ readonly initial: ShardCheckpoint | undefined } | undefined> {
  const { shards, checkpoints } = await shardsAndCheckpoints(job);
  const plan = runnableShards(shards, checkpoints).find((p) => p.shard.shardId === shardId);
  if (plan === undefined) return undefined;
  const unpublished = new Set<string>();
  for (const parent of plan.shard.parentShardIds) {
    if ((await job.backend.unpublishedOutputs(parent)).length > 0) unpublished.add(parent);
  }
  return waitsForParentOutputs(plan.shard, unpublished) ? undefined : { initial: plan.initial };
}
