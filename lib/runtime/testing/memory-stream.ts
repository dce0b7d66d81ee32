/**
 * An in-memory sharded stream implementing ShardSource, with Kinesis semantics that matter
 * to the runtime: MD5 hash-key ranges, increasing sequence numbers, shard lineage, and
 * split/merge resharding (a closed parent ends; its children take new records).
 */
import {
  ConfigurationError,
  compareSequenceNumbers,
  hashKey,
  hashRange,
  type ReadResult,
  type ShardInfo,
  type ShardReader,
  type ShardSource,
  type SourceRecord,
  type StartPosition,
  shardName,
} from '../../core/index.ts';

interface MemoryShard {
  info: ShardInfo;
  records: SourceRecord[];
  children: string[];
}

export class MemoryStream implements ShardSource {
  private readonly shards = new Map<string, MemoryShard>();
  private sequence = 0n;
  private nextShard = 0;

  constructor(
    shardCount: number,
    private readonly clock: () => number = Date.now,
  ) {
    for (let i = 0; i < shardCount; i++) {
      const r = hashRange(i, shardCount);
      this.addShard([], r.start, r.end);
    }
  }

  put(partitionKey: string, data: unknown, arrivalTime = this.clock()): SourceRecord {
    const h = hashKey(partitionKey);
    const shard = [...this.shards.values()].find(
      (s) => !s.info.closed && h >= BigInt(s.info.hashKeyRange.start) && h <= BigInt(s.info.hashKeyRange.end),
    );
    if (shard === undefined) throw new Error(`internal: no open shard owns partition key ${partitionKey}`);
    this.sequence += 1n;
    const record = { data, partitionKey, sequenceNumber: this.sequence.toString(), arrivalTime };
    shard.records.push(record);
    return record;
  }

  /** Splits an open shard at the middle of its hash range. Returns the two children. */
  split(shardId: string): [string, string] {
    const parent = this.open(shardId);
    const start = BigInt(parent.info.hashKeyRange.start);
    const end = BigInt(parent.info.hashKeyRange.end);
    const mid = (start + end) / 2n;
    this.close(parent);
    const a = this.addShard([shardId], start, mid);
    const b = this.addShard([shardId], mid + 1n, end);
    parent.children = [a, b];
    return [a, b];
  }

  /** Merges two open shards with adjacent hash ranges. Returns the child. */
  merge(shardA: string, shardB: string): string {
    const a = this.open(shardA);
    const b = this.open(shardB);
    const [lo, hi] = BigInt(a.info.hashKeyRange.start) < BigInt(b.info.hashKeyRange.start) ? [a, b] : [b, a];
    if (BigInt(lo.info.hashKeyRange.end) + 1n !== BigInt(hi.info.hashKeyRange.start)) {
      throw new ConfigurationError(
        `shards ${shardA} and ${shardB} are not adjacent; only adjacent shards merge`,
      );
    }
    this.close(a);
    this.close(b);
    const child = this.addShard(
      [lo.info.shardId, hi.info.shardId],
      BigInt(lo.info.hashKeyRange.start),
      BigInt(hi.info.hashKeyRange.end),
    );
    a.children = [child];
    b.children = [child];
    return child;
  }

  async listShards(): Promise<ShardInfo[]> {
    return [...this.shards.values()].map((s) => s.info);
  }

  records(shardId: string): readonly SourceRecord[] {
    return this.get(shardId).records;
  }

  async openReader(shardId: string, position: StartPosition): Promise<ShardReader> {
    const shard = this.get(shardId);
    let index = 0;
    if (position.type === 'LATEST') index = shard.records.length;
    else if (position.type === 'AT_TIMESTAMP') {
      index = shard.records.findIndex((r) => r.arrivalTime >= position.timestamp);
      if (index < 0) index = shard.records.length;
    } else if (position.type === 'AFTER_SEQUENCE_NUMBER') {
      index = shard.records.findIndex(
        (r) => compareSequenceNumbers(r.sequenceNumber, position.sequenceNumber) > 0,
      );
      if (index < 0) index = shard.records.length;
    }
    return {
      read: async (limit: number): Promise<ReadResult> => {
        const records = shard.records.slice(index, index + limit);
        index += records.length;
        const atEnd = index >= shard.records.length;
        const shardEnded = atEnd && shard.info.closed;
        return {
          records,
          millisBehindLatest: atEnd ? 0 : Math.max(1, this.clock() - (records.at(-1)?.arrivalTime ?? 0)),
          shardEnded,
          ...(shardEnded ? { childShardIds: shard.children } : {}),
        };
      },
    };
  }

  private addShard(parents: string[], start: bigint, end: bigint): string {
    const shardId = shardName(this.nextShard++);
    this.shards.set(shardId, {
      info: {
        shardId,
        parentShardIds: parents,
        hashKeyRange: { start: start.toString(), end: end.toString() },
        closed: false,
      },
      records: [],
      children: [],
    });
    return shardId;
  }

  private close(shard: MemoryShard): void {
    shard.info = { ...shard.info, closed: true };
  }

  private get(shardId: string): MemoryShard {
    const shard = this.shards.get(shardId);
    if (shard === undefined) throw new ConfigurationError(`unknown shard ${shardId}`);
    return shard;
  }

  private open(shardId: string): MemoryShard {
    const shard = this.get(shardId);
    if (shard.info.closed) throw new ConfigurationError(`shard ${shardId} is closed`);
    return shard;
  }
}

/** A sink that keeps outputs in memory, deduplicated by id (an idempotent sink). */
export class MemorySink {
  readonly byId = new Map<string, { sink: string; value: unknown }>();
  publishCalls = 0;
  async publish(outputs: readonly { id: string; sink: string; value: unknown }[]): Promise<void> {
    this.publishCalls++;
    for (const o of outputs) if (!this.byId.has(o.id)) this.byId.set(o.id, { sink: o.sink, value: o.value });
  }
  values(sink: string): unknown[] {
    return [...this.byId.values()].filter((o) => o.sink === sink).map((o) => o.value);
  }
}
