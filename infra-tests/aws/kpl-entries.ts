// Kinesis records to put on a test or benchmark stream: user records KPL-aggregated per owning shard, in order.
import type { PutRecordInput } from '../../lib/aws/kinesis-source.ts';
import { aggregate } from '../../lib/aws/kpl.ts';
import { hashKey, type ShardInfo } from '../../lib/core/index.ts';

export interface UserRecord {
  readonly partitionKey: string;
  readonly data: string;
  /** Put as a plain Kinesis record (after its shard's pending aggregate), not inside an aggregate. */
  readonly plain?: boolean;
}

/** The shard whose hash key range holds the partition key's hash. */
function shardOf(shards: readonly ShardInfo[], partitionKey: string): string {
  const h = hashKey(partitionKey);
  const shard = shards.find((s) => h >= BigInt(s.hashKeyRange.start) && h <= BigInt(s.hashKeyRange.end));
  if (shard === undefined) throw new Error(`no shard owns ${partitionKey}`);
  return shard.shardId;
}

/**
 * Kinesis records in put order: aggregates of up to `perAggregate` user records of one shard, and
 * the plain records; each shard's user records keep their order.
 */
export function kplEntries(
  records: readonly UserRecord[],
  shards: readonly ShardInfo[],
  perAggregate: number,
): PutRecordInput[] {
  const out: PutRecordInput[] = [];
  const pending = new Map<string, UserRecord[]>(shards.map((s) => [s.shardId, []]));
  const flush = (shardId: string): void => {
    const list = pending.get(shardId)!;
    if (list.length === 0) return;
    const agg = aggregate(list.map((r) => ({ partitionKey: r.partitionKey, data: r.data })));
    out.push({ partitionKey: agg.partitionKey, data: agg.data });
    pending.set(shardId, []);
  };
  for (const r of records) {
    const shardId = shardOf(shards, r.partitionKey);
    if (r.plain === true) {
      flush(shardId);
      out.push({ partitionKey: r.partitionKey, data: r.data });
      continue;
    }
    pending.get(shardId)!.push(r);
    if (pending.get(shardId)!.length >= perAggregate) flush(shardId);
  }
  for (const s of shards) flush(s.shardId);
  return out;
}
