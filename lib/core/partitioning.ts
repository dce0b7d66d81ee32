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

/**
 * The index of the shard owning `partitionKey` among `shardCount` shards of equal ranges: the
 * last shard whose range starts at or before the key's hash (see hashRange).
 */
export function shardIndexFor(partitionKey: string, shardCount: number): number {
  return shardIndexForHash(hashKey(partitionKey), shardCount);
}

/** shardIndexFor of a hash key: the largest i with floor(i * 2^128 / shardCount) <= hash. */
export function shardIndexForHash(hash: bigint, shardCount: number): number {
  return Number(((hash + 1n) * BigInt(shardCount) - 1n) / HASH_SPACE);
}

/**
 * The hash-key range [start, end] of shard `index` among `shardCount` equal shards. As Kinesis
 * splits the space at CreateStream: shard i starts at floor(i * 2^128 / shardCount) (with 3
 * shards the first ends at 113427455640312821154458202477256070484).
 */
export function hashRange(index: number, shardCount: number): { start: bigint; end: bigint } {
  const n = BigInt(shardCount);
  const start = (HASH_SPACE * BigInt(index)) / n;
  const end = (HASH_SPACE * BigInt(index + 1)) / n - 1n;
  return { start, end };
}
