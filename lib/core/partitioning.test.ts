import { describe, expect, it } from 'vitest';
import { hashKey, hashRange, shardIndexFor, shardIndexForHash } from './partitioning.ts';

const LAST = (1n << 128n) - 1n;

describe('Kinesis-style partitioning', () => {
  it('splits the hash space as Kinesis CreateStream does (3 shards, as DescribeStream shows them)', () => {
    expect([0, 1, 2].map((i) => hashRange(i, 3))).toEqual([
      { start: 0n, end: 113427455640312821154458202477256070484n },
      { start: 113427455640312821154458202477256070485n, end: 226854911280625642308916404954512140969n },
      { start: 226854911280625642308916404954512140970n, end: LAST },
    ]);
  });

  it('ranges tile [0, 2^128 - 1] and each hash goes to the shard whose range holds it, boundaries included', () => {
    for (let n = 1; n <= 12; n++) {
      let next = 0n;
      for (let i = 0; i < n; i++) {
        const { start, end } = hashRange(i, n);
        expect(start).toBe(next);
        expect(end).toBeGreaterThanOrEqual(start);
        for (const h of [start, start + 1n, end - 1n, end]) {
          if (h >= start && h <= end) expect(shardIndexForHash(h, n)).toBe(i);
        }
        next = end + 1n;
      }
      expect(next - 1n).toBe(LAST);
    }
  });

  it('routes a partition key by the MD5 of its UTF-8 bytes', () => {
    // md5("a") = 0cc175b9c0f1b6a831c399e269772661
    expect(hashKey('a')).toBe(0x0cc175b9c0f1b6a831c399e269772661n);
    for (const key of ['a', 'b', '/home', 'ü', '😀', 'user-42']) {
      for (const n of [1, 2, 3, 7]) {
        const i = shardIndexFor(key, n);
        const { start, end } = hashRange(i, n);
        expect(hashKey(key) >= start && hashKey(key) <= end).toBe(true);
      }
    }
  });
});
