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
  // A finished shard's last commit puts every timer inline (timer-log.ts), so they are all here.
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

export interface CoordinatorDeps {
  /** True while some worker holds a live lease on the shard. */
  readonly isLeaseLive: (shardId: string) => Promise<boolean>;
  /** Starts a worker for the shard (e.g. an asynchronous Lambda invocation). */
  readonly startWorker: (shardId: string, initial: ShardCheckpoint | undefined) => Promise<void>;
}

/**
 * One coordinator round: publish what finished shards left in their outbox, then start a
 * worker for every runnable shard (parents before children) that no worker holds.
 */
export async function coordinateRound(
  job: Pick<import('./job.ts').JobRuntime, 'source' | 'backend' | 'sink'>,
  deps: CoordinatorDeps,
): Promise<{ started: string[]; running: string[]; finished: string[] }> {
  const shards = await job.source.listShards();
  const checkpoints = new Map((await job.backend.listCheckpoints()).map((c) => [c.shardId, c]));
  const finished: string[] = [];
  for (const c of checkpoints.values()) {
    if (!c.finished) continue;
    finished.push(c.shardId);
    const pending = await job.backend.unpublishedOutputs(c.shardId);
    if (pending.length > 0) {
      await job.sink.publish(pending);
      await job.backend.markPublished(
        c.shardId,
        pending.map((o) => o.id),
      );
    }
  }
  const started: string[] = [];
  const running: string[] = [];
  for (const plan of runnableShards(shards, checkpoints)) {
    if (await deps.isLeaseLive(plan.shard.shardId)) {
      running.push(plan.shard.shardId);
      continue;
    }
    await deps.startWorker(plan.shard.shardId, plan.initial);
    started.push(plan.shard.shardId);
  }
  return { started, running, finished };
}
