import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { compareSequenceNumbers } from '../core/checkpoint.ts';
import { ConfigurationError } from '../core/errors.ts';
import { hashKey, hashRange, shardIndexFor, shardName } from '../core/partitioning.ts';
import type { SourceRecord } from '../core/ports.ts';
import {
  DEFAULT_RETENTION_MS,
  formatSequenceNumber,
  LocalLog,
  SEQUENCE_NUMBER_DIGITS,
  TrimmedPositionError,
} from './local-log.ts';

const dir = mkdtempSync(join(tmpdir(), 'floe-local-log-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

const T0 = 1_700_000_000_000;
const text = (r: SourceRecord): string => new TextDecoder().decode(r.data as Uint8Array);

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a rejection');
}

describe('LocalLog', () => {
  let path: string;
  let now: number;
  let log: LocalLog;
  const clock = () => now;

  beforeEach(() => {
    path = join(dir, `log-${++n}.db`);
    now = T0;
    log = LocalLog.open(path, { clock });
  });
  afterEach(async () => {
    await log.close();
  });

  describe('streams', () => {
    it('creates a stream of N shards with Kinesis names and equal MD5 hash-key ranges', async () => {
      const d = await log.createStream('clicks', { shards: 4 });
      expect(d.name).toBe('clicks');
      expect(d.retentionMs).toBe(DEFAULT_RETENTION_MS);
      expect(d.openShardCount).toBe(4);
      expect(d.records).toBe(0);
      expect(d.shards).toEqual(
        [0, 1, 2, 3].map((i) => ({
          shardId: shardName(i),
          parentShardIds: [],
          hashKeyRange: { start: hashRange(i, 4).start.toString(), end: hashRange(i, 4).end.toString() },
          closed: false,
        })),
      );
      expect(await log.source('clicks').listShards()).toEqual(d.shards);
      expect(await log.describeStream('clicks')).toEqual(d);
      await log.createStream('a-other.stream_2', { shards: 1, retentionMs: Number.POSITIVE_INFINITY });
      expect(await log.listStreams()).toEqual(['a-other.stream_2', 'clicks']);
      expect((await log.describeStream('a-other.stream_2')).retentionMs).toBeUndefined();
    });

    it('refuses a duplicate stream; ensureStream keeps the existing one', async () => {
      await log.createStream('s', { shards: 2 });
      const error = await rejection(log.createStream('s', { shards: 3 }));
      expect(error).toBeInstanceOf(ConfigurationError);
      expect(error.message).toMatch(/already exists/);
      expect((await log.ensureStream('s', { shards: 3 })).openShardCount).toBe(2);
      expect((await log.ensureStream('t', { shards: 3 })).openShardCount).toBe(3);
    });

    it('validates names, shard counts and retention with ConfigurationError', async () => {
      for (const bad of [
        () => log.createStream('', { shards: 1 }),
        () => log.createStream('has space', { shards: 1 }),
        () => log.createStream('s', { shards: 0 }),
        () => log.createStream('s', { shards: 1.5 }),
        () => log.createStream('s', { shards: 5000 }),
        () => log.createStream('s', { shards: 1, retentionMs: 0 }),
        () => log.createStream('s', { shards: 1, retentionMs: Number.NaN }),
      ]) {
        expect(await rejection(bad())).toBeInstanceOf(ConfigurationError);
      }
      expect(await log.listStreams()).toEqual([]);
    });

    it('an unknown stream or shard is a ConfigurationError naming what exists', async () => {
      await log.createStream('known', { shards: 1 });
      for (const p of [
        log.describeStream('nope'),
        log.append('nope', [{ partitionKey: 'k', data: 'x' }]),
        log.source('nope').listShards(),
        log.source('nope').openReader(shardName(0), { type: 'TRIM_HORIZON' }),
        log.deleteStream('nope'),
        log.trim('nope'),
      ]) {
        const error = await rejection(p);
        expect(error).toBeInstanceOf(ConfigurationError);
        expect(error.message).toContain('"nope" does not exist');
        expect(error.message).toContain('"known"');
      }
      const error = await rejection(
        log.source('known').openReader('shardId-000000000007', { type: 'LATEST' }),
      );
      expect(error).toBeInstanceOf(ConfigurationError);
      expect(error.message).toContain(shardName(0));
    });

    it('deletes a stream and its records', async () => {
      await log.createStream('s', { shards: 2 });
      await log.append('s', [{ partitionKey: 'a', data: '1' }]);
      await log.deleteStream('s');
      expect(await log.listStreams()).toEqual([]);
      await log.createStream('s', { shards: 1 });
      expect((await log.describeStream('s')).records).toBe(0);
    });
  });

  describe('append and read', () => {
    it('routes records by the MD5 hash of the partition key, with increasing fixed-width sequence numbers', async () => {
      await log.createStream('s', { shards: 3 });
      const keys = Array.from({ length: 60 }, (_, i) => `user-${i}`);
      const results = await log.append(
        's',
        keys.map((k, i) => ({ partitionKey: k, data: `v${i}` })),
      );
      expect(results.map((r) => r.shardId)).toEqual(keys.map((k) => shardName(shardIndexFor(k, 3))));
      for (const r of results) {
        expect(r.sequenceNumber).toMatch(new RegExp(`^\\d{${SEQUENCE_NUMBER_DIGITS}}$`));
      }
      for (let i = 1; i < results.length; i++) {
        expect(
          compareSequenceNumbers(results[i - 1]!.sequenceNumber, results[i]!.sequenceNumber),
        ).toBeLessThan(0);
      }
      const source = log.source('s');
      let total = 0;
      for (const shard of await source.listShards()) {
        const reader = await source.openReader(shard.shardId, { type: 'TRIM_HORIZON' });
        const { records } = await reader.read(1000);
        total += records.length;
        for (const r of records) {
          const h = hashKey(r.partitionKey);
          expect(h >= BigInt(shard.hashKeyRange.start) && h <= BigInt(shard.hashKeyRange.end)).toBe(true);
        }
        // In append order within the shard.
        const expected = results.filter((r) => r.shardId === shard.shardId).map((r) => r.sequenceNumber);
        expect(records.map((r) => r.sequenceNumber)).toEqual(expected);
      }
      expect(total).toBe(60);
    });

    it('returns data as Uint8Array with partition key, sequence number and arrival time; pages by limit', async () => {
      await log.createStream('s', { shards: 1 });
      const bytes = new Uint8Array([0, 255, 1, 128, 10]);
      await log.append('s', [
        { partitionKey: 'a', data: 'héllo 😀' },
        { partitionKey: 'b', data: bytes },
      ]);
      now = T0 + 1000;
      await log.append('s', [{ partitionKey: 'c', data: '{"n":3}' }]);
      const reader = await log.source('s').openReader(shardName(0), { type: 'TRIM_HORIZON' });

      const first = await reader.read(2);
      expect(first.records).toHaveLength(2);
      expect(first.records[0]!.data).toBeInstanceOf(Uint8Array);
      expect(text(first.records[0]!)).toBe('héllo 😀');
      expect(Array.from(first.records[1]!.data as Uint8Array)).toEqual(Array.from(bytes));
      expect(first.records.map((r) => [r.partitionKey, r.arrivalTime])).toEqual([
        ['a', T0],
        ['b', T0],
      ]);
      expect(first.millisBehindLatest).toBe(1000);
      expect(first.shardEnded).toBe(false);

      const second = await reader.read(10);
      expect(second.records.map(text)).toEqual(['{"n":3}']);
      expect(second.records[0]!.arrivalTime).toBe(T0 + 1000);
      expect(second.millisBehindLatest).toBe(0);
      expect(reader.position).toBe(second.records[0]!.sequenceNumber);

      const empty = await reader.read(10);
      expect(empty).toEqual({ records: [], millisBehindLatest: 0, shardEnded: false });
      // New records are seen by an open reader.
      await log.append('s', [{ partitionKey: 'd', data: 'later' }]);
      expect((await reader.read(10)).records.map(text)).toEqual(['later']);
    });

    it('reports a positive millisBehindLatest while records remain, even with equal arrival times', async () => {
      await log.createStream('s', { shards: 1 });
      await log.append(
        's',
        Array.from({ length: 5 }, (_, i) => ({ partitionKey: 'k', data: String(i) })),
      );
      const reader = await log.source('s').openReader(shardName(0), { type: 'TRIM_HORIZON' });
      expect((await reader.read(2)).millisBehindLatest).toBeGreaterThan(0);
      expect((await reader.read(3)).millisBehindLatest).toBe(0);
    });

    it('starts at LATEST, AT_TIMESTAMP and AFTER_SEQUENCE_NUMBER', async () => {
      await log.createStream('s', { shards: 1 });
      const shard = shardName(0);
      const source = log.source('s');
      const r1 = await log.append('s', [{ partitionKey: 'k', data: 'one' }]);
      now = T0 + 10;
      await log.append('s', [{ partitionKey: 'k', data: 'two' }]);
      now = T0 + 20;
      await log.append('s', [{ partitionKey: 'k', data: 'three' }]);
      const latest = await source.openReader(shard, { type: 'LATEST' });
      await log.append('s', [{ partitionKey: 'k', data: 'four' }]);
      expect((await latest.read(10)).records.map(text)).toEqual(['four']);

      const at = await source.openReader(shard, { type: 'AT_TIMESTAMP', timestamp: T0 + 10 });
      expect((await at.read(10)).records.map(text)).toEqual(['two', 'three', 'four']);
      const atStart = await source.openReader(shard, { type: 'AT_TIMESTAMP', timestamp: 0 });
      expect((await atStart.read(10)).records).toHaveLength(4);
      const atEnd = await source.openReader(shard, { type: 'AT_TIMESTAMP', timestamp: T0 + 1_000 });
      expect((await atEnd.read(10)).records).toEqual([]);

      const seq = r1[0]!.sequenceNumber;
      const after = await source.openReader(shard, { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber: seq });
      expect((await after.read(10)).records.map(text)).toEqual(['two', 'three', 'four']);
      // Unpadded decimal strings are the same position.
      const unpadded = String(BigInt(seq));
      const after2 = await source.openReader(shard, {
        type: 'AFTER_SEQUENCE_NUMBER',
        sequenceNumber: unpadded,
      });
      expect((await after2.read(10)).records.map(text)).toEqual(['two', 'three', 'four']);

      for (const sequenceNumber of ['abc', '', '-1', formatSequenceNumber(10_000)]) {
        const error = await rejection(
          source.openReader(shard, { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber }),
        );
        expect(error).toBeInstanceOf(ConfigurationError);
      }
      for (const limit of [0, -1, 1.5, 10_001]) {
        expect(await rejection(after.read(limit))).toBeInstanceOf(ConfigurationError);
      }
    });

    it('keeps arrival times non-decreasing and accepts explicit ones', async () => {
      await log.createStream('s', { shards: 1 });
      await log.append('s', [
        { partitionKey: 'k', data: 'a', arrivalTime: T0 + 500 },
        { partitionKey: 'k', data: 'b', arrivalTime: T0 + 100 },
        { partitionKey: 'k', data: 'c' },
      ]);
      now = T0 + 2_000;
      await log.append('s', [{ partitionKey: 'k', data: 'd' }]);
      const reader = await log.source('s').openReader(shardName(0), { type: 'TRIM_HORIZON' });
      expect((await reader.read(10)).records.map((r) => r.arrivalTime)).toEqual([
        T0 + 500,
        T0 + 500,
        T0 + 500,
        T0 + 2_000,
      ]);
    });

    it('rejects malformed records before writing any', async () => {
      await log.createStream('s', { shards: 1 });
      const bad = [
        { partitionKey: '', data: 'x' },
        { partitionKey: 'k'.repeat(257), data: 'x' },
        { partitionKey: 'k', data: { not: 'bytes' } },
        { partitionKey: 'k', data: new Uint8Array(1024 * 1024 + 1) },
        { partitionKey: 'k', data: 'x', arrivalTime: Number.NaN },
      ];
      for (const record of bad) {
        const error = await rejection(
          log.append('s', [{ partitionKey: 'ok', data: 'fine' }, record as never]),
        );
        expect(error).toBeInstanceOf(TypeError);
        expect(error.message).toMatch(/^record 1/);
      }
      expect((await log.describeStream('s')).records).toBe(0);
    });

    it('persists across reopen and is shared by two connections to one file', async () => {
      await log.createStream('s', { shards: 2 });
      const other = LocalLog.open(path, { clock });
      try {
        await other.append('s', [{ partitionKey: 'k', data: 'from other' }]);
        const shard = shardName(shardIndexFor('k', 2));
        const reader = await log.source('s').openReader(shard, { type: 'TRIM_HORIZON' });
        expect((await reader.read(10)).records.map(text)).toEqual(['from other']);
        await log.append('s', [{ partitionKey: 'k', data: 'from first' }]);
        expect((await reader.read(10)).records.map(text)).toEqual(['from first']);
      } finally {
        await other.close();
      }
      await log.close();
      log = LocalLog.open(path, { clock });
      const again = await log
        .source('s')
        .openReader(shardName(shardIndexFor('k', 2)), { type: 'TRIM_HORIZON' });
      expect((await again.read(10)).records.map(text)).toEqual(['from other', 'from first']);
      // Sequence numbers keep increasing after a reopen.
      const [next] = await log.append('s', [{ partitionKey: 'k', data: 'x' }]);
      expect(compareSequenceNumbers(next!.sequenceNumber, formatSequenceNumber(2))).toBeGreaterThan(0);
    });
  });

  describe('retention', () => {
    const HOUR = 3_600_000;

    it('trims records older than the retention; a reader behind the trim point gets TrimmedPositionError', async () => {
      await log.createStream('s', { shards: 1, retentionMs: HOUR });
      const shard = shardName(0);
      const source = log.source('s');
      const old = await log.append('s', [
        { partitionKey: 'k', data: 'old-1' },
        { partitionKey: 'k', data: 'old-2' },
      ]);
      now = T0 + 30 * 60_000;
      await log.append('s', [{ partitionKey: 'k', data: 'mid' }]);
      const reader = await source.openReader(shard, { type: 'TRIM_HORIZON' });
      expect((await reader.read(1)).records.map(text)).toEqual(['old-1']);

      now = T0 + HOUR + 1; // old-1 and old-2 expire, mid does not
      // Without any append, a read trims first: expired records are never returned.
      const error = await rejection(reader.read(10));
      expect(error).toBeInstanceOf(TrimmedPositionError);
      const trimmed = error as TrimmedPositionError;
      expect(trimmed.code).toBe('TRIMMED_POSITION');
      expect(trimmed.retryable).toBe(false);
      expect(trimmed.position).toBe(old[0]!.sequenceNumber);
      expect(trimmed.trimmedThrough).toBe(old[1]!.sequenceNumber);
      // The remedies are ones a `floe run` user can take: a savepoint from before the checkpoint has
      // lost the same records, and onTrimmed is an API option, not a flag.
      expect(trimmed.message).toContain('nor from a savepoint taken before it');
      expect(trimmed.message).toContain("'floe replay --from-timestamp <time> --pipeline <module.ts>'");
      expect((await log.describeStream('s')).records).toBe(1);

      // A checkpoint at the last trimmed record lost nothing.
      const atEdge = await source.openReader(shard, {
        type: 'AFTER_SEQUENCE_NUMBER',
        sequenceNumber: old[1]!.sequenceNumber,
      });
      expect((await atEdge.read(10)).records.map(text)).toEqual(['mid']);
      // One before it lost old-2.
      const behind = await source.openReader(shard, {
        type: 'AFTER_SEQUENCE_NUMBER',
        sequenceNumber: old[0]!.sequenceNumber,
      });
      expect(await rejection(behind.read(10))).toBeInstanceOf(TrimmedPositionError);
      // TRIM_HORIZON starts at the oldest available record; 'skip' accepts the loss.
      const horizon = await source.openReader(shard, { type: 'TRIM_HORIZON' });
      expect((await horizon.read(10)).records.map(text)).toEqual(['mid']);
      const skipping = await log
        .source('s', { onTrimmed: 'skip' })
        .openReader(shard, { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber: old[0]!.sequenceNumber });
      expect((await skipping.read(10)).records.map(text)).toEqual(['mid']);
    });

    it('trims on append and with trim(); infinite retention keeps everything', async () => {
      await log.createStream('short', { shards: 2, retentionMs: HOUR });
      await log.createStream('forever', { shards: 1, retentionMs: Number.POSITIVE_INFINITY });
      await log.append('short', [
        { partitionKey: 'a', data: '1' },
        { partitionKey: 'b', data: '2' },
      ]);
      await log.append('forever', [{ partitionKey: 'a', data: '1' }]);
      now = T0 + 2 * HOUR;
      expect(await log.trim()).toBe(2);
      expect((await log.describeStream('short')).records).toBe(0);
      expect((await log.describeStream('forever')).records).toBe(1);
      await log.append('short', [{ partitionKey: 'a', data: '3' }]);
      now = T0 + 4 * HOUR;
      await log.append('short', [{ partitionKey: 'b', data: '4' }]);
      expect((await log.describeStream('short')).records).toBe(1);
    });
  });

  describe('resharding', () => {
    it('split and merge close parents, open children with lineage, and route new records to children', async () => {
      await log.createStream('s', { shards: 2 });
      const source = log.source('s');
      const [s0, s1] = [shardName(0), shardName(1)];
      await log.append('s', [
        { partitionKey: 'k1', data: 'before' },
        { partitionKey: 'k2', data: 'before' },
      ]);
      const [lower, upper] = await log.splitShard('s', s0);
      expect([lower, upper]).toEqual([shardName(2), shardName(3)]);
      const shards = await source.listShards();
      const byId = new Map(shards.map((s) => [s.shardId, s]));
      expect(byId.get(s0)!.closed).toBe(true);
      expect(byId.get(lower)!.parentShardIds).toEqual([s0]);
      expect(byId.get(upper)!.parentShardIds).toEqual([s0]);
      expect(BigInt(byId.get(lower)!.hashKeyRange.start)).toBe(hashRange(0, 2).start);
      expect(BigInt(byId.get(lower)!.hashKeyRange.end) + 1n).toBe(
        BigInt(byId.get(upper)!.hashKeyRange.start),
      );
      expect(BigInt(byId.get(upper)!.hashKeyRange.end)).toBe(hashRange(0, 2).end);

      // New records go to the open shard owning the key's hash.
      const keys = Array.from({ length: 40 }, (_, i) => `key-${i}`);
      const results = await log.append(
        's',
        keys.map((k) => ({ partitionKey: k, data: k })),
      );
      for (const [i, r] of results.entries()) {
        const info = byId.get(r.shardId)!;
        expect(info.closed).toBe(false);
        const h = hashKey(keys[i]!);
        expect(h >= BigInt(info.hashKeyRange.start) && h <= BigInt(info.hashKeyRange.end)).toBe(true);
      }

      // The closed parent is read to its end, then reports its children.
      const parentReader = await source.openReader(s0, { type: 'TRIM_HORIZON' });
      const ended = await parentReader.read(100);
      expect(ended.shardEnded).toBe(true);
      expect(ended.childShardIds).toEqual([lower, upper]);
      expect(ended.records.length).toBeGreaterThanOrEqual(0);

      const child = await log.mergeShards('s', upper, s1);
      const merged = (await source.listShards()).find((s) => s.shardId === child)!;
      expect(merged.parentShardIds).toEqual([upper, s1]);
      expect(BigInt(merged.hashKeyRange.start)).toBe(BigInt(byId.get(upper)!.hashKeyRange.start));
      expect(BigInt(merged.hashKeyRange.end)).toBe(hashRange(1, 2).end);
      expect((await log.describeStream('s')).openShardCount).toBe(2);

      expect(await rejection(log.mergeShards('s', lower, shardName(99)))).toBeInstanceOf(ConfigurationError);
      expect(await rejection(log.splitShard('s', s0))).toBeInstanceOf(ConfigurationError); // closed
      const [c1, c2] = await log.splitShard('s', child);
      expect(await rejection(log.mergeShards('s', lower, c2))).toBeInstanceOf(ConfigurationError); // not adjacent
      expect(c1).toBeDefined();
    });

    it('updateShardCount reshards to equal ranges; overlapping old shards are the parents', async () => {
      await log.createStream('s', { shards: 2 });
      const d = await log.updateShardCount('s', 3);
      const open = d.shards.filter((s) => !s.closed);
      expect(open.map((s) => s.shardId)).toEqual([shardName(2), shardName(3), shardName(4)]);
      expect(open.map((s) => s.parentShardIds)).toEqual([
        [shardName(0)],
        [shardName(0), shardName(1)],
        [shardName(1)],
      ]);
      const results = await log.append('s', [{ partitionKey: 'x', data: '1' }]);
      expect(results[0]!.shardId).toBe(shardName(2 + shardIndexFor('x', 3)));
    });

    it('a closed empty parent is unlisted once the retention has passed since it closed', async () => {
      await log.createStream('s', { shards: 1, retentionMs: 1000 });
      await log.append('s', [{ partitionKey: 'k', data: 'x' }]);
      await log.splitShard('s', shardName(0));
      expect((await log.source('s').listShards()).map((s) => s.shardId)).toContain(shardName(0));
      now = T0 + 1001;
      const listed = (await log.source('s').listShards()).map((s) => s.shardId);
      expect(listed).toEqual([shardName(1), shardName(2)]);
      // The children still name it as their parent.
      expect((await log.source('s').listShards())[0]!.parentShardIds).toEqual([shardName(0)]);
    });
  });
});
