/** Kinesis-style partitioning: MD5 of the partition key as a 128-bit integer, split evenly. */
import { createHash } from 'node:crypto';

/** `shardId-000000000003`, as Kinesis names shards. */
export function shardName(index: number): string {
  return `shardId-${String(index).padStart(12, '0')}`;
}

export function hashKey(partitionKey: string): bigint {
  return BigInt(`0x${createHash('md5').update(partitionKey, 'utf8').digest('hex')}`);
}

const HASH_SPACE = 1n << 128n;

/** The index of the shard owning `partitionKey` among `shardCount` shards of equal ranges. */
export function shardIndexFor(partitionKey: string, shardCount: number): number {
  const index = (hashKey(partitionKey) * BigInt(shardCount)) / HASH_SPACE;
  return Number(index);
}

/** The hash-key range [start, end] of shard `index` among `shardCount` equal shards. */
export function hashRange(index: number, shardCount: number): { start: bigint; end: bigint } {
  const start = (HASH_SPACE * BigInt(index) + BigInt(shardCount) - 1n) / BigInt(shardCount);
  const end = (HASH_SPACE * BigInt(index + 1) + BigInt(shardCount) - 1n) / BigInt(shardCount) - 1n;
  return { start, end };
}
