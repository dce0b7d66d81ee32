/**
 * A check of co-partitioning for the local runner, which runs every shard of a job in one
 * process. floe's state is exact only when all events of a key reach one shard at a time
 * (docs/dsl.md, "Keys and shards"): keyBy must follow the stream's partition key. When it does
 * not, two shards write the same keyed state entry, each from its own cached copy, and both
 * results are wrong; nothing else would say so. Here every commit's state mutations are compared
 * with the shard that last wrote each entry: a writer that neither is nor descends from that
 * shard (a split or merge child takes over its parents' keys) fails the commit before anything
 * is written.
 */
import {
  coPartitioningError,
  isTimerChunkAddress,
  type ShardInfo,
  type StateMutation,
} from '../core/index.ts';

/** Entries remembered at most; beyond that only remembered entries are checked (memory stays bounded). */
const MAX_TRACKED_ENTRIES = 200_000;

export class CoPartitioningCheck {
  /** State address -> the shard that last committed it. */
  private readonly writers = new Map<string, string>();
  private readonly parents = new Map<string, readonly string[]>();

  constructor(private readonly maxEntries = MAX_TRACKED_ENTRIES) {}

  /** Learns the shards' lineage (call with every listing: children appear after a reshard). */
  lineage(shards: readonly ShardInfo[]): void {
    for (const s of shards) this.parents.set(s.shardId, s.parentShardIds);
  }

  /** Throws a ConfigurationError if `shardId` writes an entry another, unrelated shard wrote. */
  check(shardId: string, mutations: readonly StateMutation[]): void {
    // Timer chunks (`floe.timers/...`) belong to one shard by name, not to a stream key.
    const keyed = mutations.filter((m) => !isTimerChunkAddress(m.address));
    for (const m of keyed) {
      const previous = this.writers.get(m.address);
      if (previous === undefined || previous === shardId || this.descends(shardId, previous)) continue;
      throw coPartitioningError(m.address, previous, shardId, 'write');
    }
    for (const m of keyed) {
      if (this.writers.size < this.maxEntries || this.writers.has(m.address))
        this.writers.set(m.address, shardId);
    }
  }

  /** Whether `shard` is a (transitive) child of `ancestor`. */
  private descends(shard: string, ancestor: string): boolean {
    const seen = new Set<string>();
    const todo = [...(this.parents.get(shard) ?? [])];
    while (todo.length > 0) {
      const s = todo.pop()!;
      if (s === ancestor) return true;
      if (seen.has(s)) continue;
      seen.add(s);
      todo.push(...(this.parents.get(s) ?? []));
    }
    return false;
  }
}
