/**
 * KinesisSource against the Kinesis of the test environment (kinesis-local here): start positions,
 * complete ordered reads, resume, split/merge lineage, KPL de-aggregation with resumable positions,
 * iterator expiry and throttling (injected with lib/aws/faults.ts, since the emulator never throttles).
 */
import {
  ExpiredIteratorException,
  ExpiredNextTokenException,
  type KinesisClient,
  MergeShardsCommand,
  ProvisionedThroughputExceededException,
  SplitShardCommand,
} from '@aws-sdk/client-kinesis';
import { afterAll, describe, expect, it } from 'vitest';
import { injectTransientFaults } from '../../lib/aws/faults.ts';
import {
  encodePosition,
  type KinesisShardReader,
  KinesisSource,
  type KinesisSourceEvent,
  type KinesisSourceRecord,
  positionAfter,
  putRecords,
} from '../../lib/aws/kinesis-source.ts';
import { aggregate, type KplUserRecordInput } from '../../lib/aws/kpl.ts';
import {
  ConfigurationError,
  compareSequenceNumbers,
  hashKey,
  type ShardInfo,
  TransientBackendError,
} from '../../lib/core/index.ts';
import { kinesisClient, setupAwsTestEnv } from '../env/aws-clients.ts';
import { createTestStream, waitStreamActive } from '../env/kinesis-streams.ts';

const env = await setupAwsTestEnv();
const clients: KinesisClient[] = [];
function newClient(): KinesisClient {
  const c = kinesisClient(env);
  clients.push(c);
  return c;
}
const kinesis = newClient();
afterAll(() => {
  for (const c of clients) c.destroy();
});

/** Fast backoff for tests (the emulator answers in ~1 ms). */
const FAST_RETRY = { baseDelayMs: 2, maxDelayMs: 20 } as const;
/** No pacing, for tests that make many GetRecords calls and are not about pacing. */
const UNPACED = { minGetRecordsIntervalMs: 0, throttledGetRecordsIntervalMs: 0 } as const;

/**
 * A clock that only moves when the source sleeps, for the pacing and the backoff alike, so that waits
 * are asserted exactly and take no wall time.
 */
function virtualTime(start = 1_000_000) {
  const time = {
    now: start,
    sleeps: [] as number[],
    clock: () => time.now,
    sleep: async (ms: number) => {
      time.sleeps.push(ms);
      time.now += ms;
    },
  };
  return time;
}

/**
 * A client that records the (virtual) time and Limit of every GetRecords it is given, and throws
 * ProvisionedThroughputExceededException, before sending, for the calls `throttle(n)` selects.
 */
function recordingClient(clock: () => number, throttle: (n: number) => boolean = () => false) {
  const client = newClient();
  const calls: { at: number; limit: number | undefined; throttled: boolean }[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      if (context.commandName !== 'GetRecordsCommand') return next(args);
      const throttled = throttle(calls.length + 1);
      calls.push({ at: clock(), limit: (args.input as { Limit?: number }).Limit, throttled });
      if (throttled) {
        throw new ProvisionedThroughputExceededException({
          message: 'Rate exceeded for Shard',
          $metadata: { httpStatusCode: 400 },
        });
      }
      return next(args);
    },
    { step: 'initialize', name: 'recordGetRecords' },
  );
  return { client, calls };
}

const gapsOf = (calls: readonly { at: number }[]) => calls.slice(1).map((c, i) => c.at - calls[i]!.at);
const text = new TextDecoder();
const str = (r: KinesisSourceRecord) => text.decode(r.data);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Drained {
  records: KinesisSourceRecord[];
  ended: boolean;
  childShardIds: readonly string[];
  reads: number;
}

/** Reads until the shard ends or an empty read reports being caught up. */
async function drain(reader: KinesisShardReader, limit = 500): Promise<Drained> {
  const records: KinesisSourceRecord[] = [];
  for (let reads = 1; reads < 10_000; reads++) {
    const r = await reader.read(limit);
    expect(r.records.length).toBeLessThanOrEqual(limit);
    records.push(...(r.records as KinesisSourceRecord[]));
    if (r.shardEnded) return { records, ended: true, childShardIds: r.childShardIds ?? [], reads };
    if (r.records.length === 0 && r.millisBehindLatest === 0) {
      return { records, ended: false, childShardIds: [], reads };
    }
  }
  throw new Error('drain did not finish');
}

function expectIncreasing(records: readonly KinesisSourceRecord[]): void {
  for (let i = 1; i < records.length; i++) {
    expect(compareSequenceNumbers(records[i - 1]!.sequenceNumber, records[i]!.sequenceNumber)).toBeLessThan(
      0,
    );
  }
}

/** Partition keys whose MD5 hash key lies in [start, end]. */
function keysIn(range: { start: string; end: string }, count: number, prefix: string): string[] {
  const keys: string[] = [];
  for (let i = 0; keys.length < count; i++) {
    const h = hashKey(`${prefix}-${i}`);
    if (h >= BigInt(range.start) && h <= BigInt(range.end)) keys.push(`${prefix}-${i}`);
  }
  return keys;
}

describe(`KinesisSource (${env.engines.kinesis})`, () => {
  it('reads from every start position', async () => {
    const stream = await createTestStream(kinesis, 'positions', 1);
    const source = new KinesisSource({ client: kinesis, stream, retry: FAST_RETRY });
    const [shard] = await source.listShards();
    const shardId = shard!.shardId;
    const first = await putRecords(
      kinesis,
      stream,
      Array.from({ length: 5 }, (_, i) => ({ partitionKey: `k${i}`, data: `a${i}` })),
    );
    await sleep(30);
    const between = Date.now();
    await sleep(30);
    await putRecords(
      kinesis,
      stream,
      Array.from({ length: 5 }, (_, i) => ({ partitionKey: `k${i}`, data: `b${i}` })),
    );

    const trim = await drain(await source.openReader(shardId, { type: 'TRIM_HORIZON' }));
    expect(trim.records.map(str)).toEqual(['a0', 'a1', 'a2', 'a3', 'a4', 'b0', 'b1', 'b2', 'b3', 'b4']);
    expect(trim.ended).toBe(false);
    expectIncreasing(trim.records);
    // plain records: position = Kinesis sequence number + 9999999; arrival times are epoch ms
    expect(trim.records[0]!.sequenceNumber).toBe(positionAfter(first[0]!.sequenceNumber));
    expect(trim.records[0]!.kinesisSequenceNumber).toBe(first[0]!.sequenceNumber);
    expect(trim.records[0]!.subSequenceNumber).toBeUndefined();
    expect(trim.records[0]!.partitionKey).toBe('k0');
    expect(Math.abs(trim.records[0]!.arrivalTime - Date.now())).toBeLessThan(60_000);

    const atTime = await drain(
      await source.openReader(shardId, { type: 'AT_TIMESTAMP', timestamp: between }),
    );
    expect(atTime.records.map(str)).toEqual(['b0', 'b1', 'b2', 'b3', 'b4']);

    const after = await drain(
      await source.openReader(shardId, {
        type: 'AFTER_SEQUENCE_NUMBER',
        sequenceNumber: trim.records[3]!.sequenceNumber,
      }),
    );
    expect(after.records.map(str)).toEqual(['a4', 'b0', 'b1', 'b2', 'b3', 'b4']);

    const latest = await source.openReader(shardId, { type: 'LATEST' });
    expect((await latest.read(100)).records).toHaveLength(0);
    await putRecords(kinesis, stream, [{ partitionKey: 'z', data: 'c0' }]);
    expect((await drain(latest)).records.map(str)).toEqual(['c0']);

    // raw mode: sequence numbers as Kinesis gives them
    const raw = new KinesisSource({ client: kinesis, stream, deaggregate: false });
    const rawRecords = (await drain(await raw.openReader(shardId, { type: 'TRIM_HORIZON' }))).records;
    expect(rawRecords.slice(0, 10).map((r) => r.sequenceNumber)).toEqual(
      trim.records.map((r) => r.kinesisSequenceNumber),
    );
    const rawAfter = await drain(
      await raw.openReader(shardId, {
        type: 'AFTER_SEQUENCE_NUMBER',
        sequenceNumber: first[4]!.sequenceNumber,
      }),
    );
    expect(rawAfter.records.map(str)).toEqual(['b0', 'b1', 'b2', 'b3', 'b4', 'c0']);

    // errors say what is wrong
    await expect(source.openReader('shardId-000000000099', { type: 'TRIM_HORIZON' })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    await expect(
      source.openReader(shardId, { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber: '12' }),
    ).rejects.toBeInstanceOf(ConfigurationError);
    const reader = await source.openReader(shardId, { type: 'TRIM_HORIZON' });
    await expect(reader.read(0)).rejects.toBeInstanceOf(ConfigurationError);
  });

  it('reads ~2,000 records of a 2-shard stream completely and in order per shard, and resumes after any position', async () => {
    const stream = await createTestStream(kinesis, 'bulk', 2);
    const source = new KinesisSource({ client: kinesis, stream, retry: FAST_RETRY, ...UNPACED });
    const shards = await source.listShards();
    expect(shards).toHaveLength(2);
    for (const s of shards) {
      expect(s.parentShardIds).toEqual([]);
      expect(s.closed).toBe(false);
    }
    expect(BigInt(shards[0]!.hashKeyRange.end) + 1n).toBe(BigInt(shards[1]!.hashKeyRange.start));

    const inputs = Array.from({ length: 2000 }, (_, i) => ({
      partitionKey: `user-${i % 150}`,
      data: JSON.stringify({ i, key: `user-${i % 150}` }),
    }));
    const t0 = performance.now();
    const put = await putRecords(kinesis, stream, inputs);
    const putMs = performance.now() - t0;

    const t1 = performance.now();
    let total = 0;
    for (const shard of shards) {
      const { records, ended, reads } = await drain(
        await source.openReader(shard.shardId, { type: 'TRIM_HORIZON' }),
        300,
      );
      expect(ended).toBe(false);
      expect(reads).toBeGreaterThan(1);
      // exactly the records put to this shard, in sequence-number order
      const expected = put
        .map((p, i) => ({ ...p, i }))
        .filter((p) => p.shardId === shard.shardId)
        .sort((a, b) => compareSequenceNumbers(a.sequenceNumber, b.sequenceNumber));
      expect(records.map((r) => r.kinesisSequenceNumber)).toEqual(expected.map((e) => e.sequenceNumber));
      expect(records.map((r) => JSON.parse(str(r)).i)).toEqual(expected.map((e) => e.i));
      expectIncreasing(records);
      for (const r of records) {
        const h = hashKey(r.partitionKey);
        expect(h >= BigInt(shard.hashKeyRange.start) && h <= BigInt(shard.hashKeyRange.end)).toBe(true);
        expect(JSON.parse(str(r)).key).toBe(r.partitionKey);
      }
      // per key, the order of the input
      const byKey = new Map<string, number[]>();
      for (const r of records)
        byKey.set(r.partitionKey, [...(byKey.get(r.partitionKey) ?? []), JSON.parse(str(r)).i]);
      for (const is of byKey.values()) expect(is).toEqual([...is].sort((a, b) => a - b));
      total += records.length;

      // resume after a few positions (as a worker does from its checkpoint): exactly the rest
      for (const cut of [0, 1, 299, 300, Math.floor(records.length / 2), records.length - 1]) {
        const rest = await drain(
          await source.openReader(shard.shardId, {
            type: 'AFTER_SEQUENCE_NUMBER',
            sequenceNumber: records[cut]!.sequenceNumber,
          }),
          250,
        );
        expect(rest.records.map((r) => r.sequenceNumber)).toEqual(
          records.slice(cut + 1).map((r) => r.sequenceNumber),
        );
      }
    }
    expect(total).toBe(2000);
    console.log(
      `[kinesis-source] put 2000 records in ${Math.round(putMs)} ms; read + 12 resumes in ${Math.round(performance.now() - t1)} ms`,
    );
  });

  it('follows a split and a merge: lineage, shard end with child shard ids, nothing lost', async () => {
    const stream = await createTestStream(kinesis, 'reshard', 2);
    const source = new KinesisSource({ client: kinesis, stream, retry: FAST_RETRY });
    const [s0, s1] = (await source.listShards()) as [ShardInfo, ShardInfo];
    const keys = Array.from({ length: 40 }, (_, i) => `key-${i}`);
    let n = 0;
    const putWave = async () => {
      await putRecords(
        kinesis,
        stream,
        keys.map((k) => ({ partitionKey: k, data: JSON.stringify({ k, n: n++ }) })),
      );
    };
    await putWave();

    // split shard 0 at the middle of its range
    const mid = (BigInt(s0.hashKeyRange.start) + BigInt(s0.hashKeyRange.end)) / 2n;
    await kinesis.send(
      new SplitShardCommand({
        StreamName: stream,
        ShardToSplit: s0.shardId,
        NewStartingHashKey: mid.toString(),
      }),
    );
    await waitStreamActive(kinesis, stream);
    await putWave();
    const afterSplit = await source.listShards();
    const children = afterSplit.filter((s) => s.parentShardIds.includes(s0.shardId));
    expect(children).toHaveLength(2);
    const upper = children.find((c) => c.hashKeyRange.start === mid.toString())!;
    const lower = children.find((c) => c.hashKeyRange.end === (mid - 1n).toString())!;
    expect(lower.hashKeyRange.start).toBe(s0.hashKeyRange.start);
    expect(upper.hashKeyRange.end).toBe(s0.hashKeyRange.end);

    // merge the upper child with shard 1 (adjacent)
    await kinesis.send(
      new MergeShardsCommand({
        StreamName: stream,
        ShardToMerge: upper.shardId,
        AdjacentShardToMerge: s1.shardId,
      }),
    );
    await waitStreamActive(kinesis, stream);
    await putWave();

    const shards = await source.listShards();
    const byId = new Map(shards.map((s) => [s.shardId, s]));
    const merged = shards.find((s) => s.parentShardIds.includes(s1.shardId))!;
    expect([...merged.parentShardIds].sort()).toEqual([upper.shardId, s1.shardId].sort());
    expect(merged.hashKeyRange).toEqual({ start: upper.hashKeyRange.start, end: s1.hashKeyRange.end });
    expect(byId.get(s0.shardId)!.closed).toBe(true);
    expect(byId.get(s1.shardId)!.closed).toBe(true);
    expect(byId.get(upper.shardId)!.closed).toBe(true);
    expect(byId.get(lower.shardId)!.closed).toBe(false);
    expect(merged.closed).toBe(false);
    expect(shards).toHaveLength(5);

    // ListShards pages (2 shards a page), and a listing whose NextToken expired starts over
    const pagingClient = newClient();
    let listCalls = 0;
    pagingClient.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'ListShardsCommand' && ++listCalls === 2) {
          throw new ExpiredNextTokenException({
            message: 'The timestamp in the NextToken has expired',
            $metadata: { httpStatusCode: 400 },
          });
        }
        return next(args);
      },
      { step: 'initialize', name: 'expireNextToken' },
    );
    const paged = new KinesisSource({ client: pagingClient, stream, listShardsPageSize: 2 });
    expect(await paged.listShards()).toEqual(shards);
    expect(listCalls).toBe(1 + 1 + 3); // page 1, expired page 2, then pages 1-3 again

    const read = async (id: string) => drain(await source.openReader(id, { type: 'TRIM_HORIZON' }), 7);
    const r0 = await read(s0.shardId);
    expect(r0.ended).toBe(true);
    expect([...r0.childShardIds].sort()).toEqual([lower.shardId, upper.shardId].sort());
    const r1 = await read(s1.shardId);
    expect(r1.ended).toBe(true);
    expect(r1.childShardIds).toEqual([merged.shardId]);
    const rUpper = await read(upper.shardId);
    expect(rUpper.ended).toBe(true);
    expect(rUpper.childShardIds).toEqual([merged.shardId]);
    const rLower = await read(lower.shardId);
    const rMerged = await read(merged.shardId);
    expect(rLower.ended).toBe(false);
    expect(rMerged.ended).toBe(false);

    // a reader at the end of a closed shard reports the end again
    const endReader = await source.openReader(s1.shardId, {
      type: 'AFTER_SEQUENCE_NUMBER',
      sequenceNumber: r1.records.at(-1)!.sequenceNumber,
    });
    const again = await endReader.read(10);
    expect(again).toMatchObject({ records: [], shardEnded: true, childShardIds: [merged.shardId] });

    // every record exactly once; per key, parents before children gives the put order
    const all = [r0, r1, rUpper, rLower, rMerged].flatMap((r) => r.records);
    expect(all.map((r) => JSON.parse(str(r)).n).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 120 }, (_, i) => i),
    );
    const lineageOrder = [
      ...r0.records,
      ...r1.records,
      ...rUpper.records,
      ...rLower.records,
      ...rMerged.records,
    ];
    for (const k of keys) {
      const ns = lineageOrder.filter((r) => r.partitionKey === k).map((r) => JSON.parse(str(r)).n);
      expect(ns).toHaveLength(3);
      expect(ns).toEqual([...ns].sort((a, b) => a - b));
    }
  });

  it('de-aggregates KPL records with their own partition keys and positions that resume inside an aggregate', async () => {
    const stream = await createTestStream(kinesis, 'kpl', 2);
    const events: KinesisSourceEvent[] = [];
    const source = new KinesisSource({
      client: kinesis,
      stream,
      retry: FAST_RETRY,
      ...UNPACED,
      onEvent: (e) => events.push(e),
    });
    const [s0, s1] = (await source.listShards()) as [ShardInfo, ShardInfo];
    const k0 = keysIn(s0.hashKeyRange, 12, 'left');
    const k1 = keysIn(s1.hashKeyRange, 2, 'right');
    const user = (key: string, v: string, ehk?: string): KplUserRecordInput => ({
      partitionKey: key,
      data: v,
      ...(ehk !== undefined ? { explicitHashKey: ehk } : {}),
    });
    const agg1 = aggregate([user(k0[0]!, 'A0'), user(k0[1]!, 'A1'), user(k0[0]!, 'A2'), user(k0[2]!, 'A3')]);
    // routed by an explicit hash key in shard 0's range, with a partition key that would go elsewhere
    const ehk = (BigInt(s0.hashKeyRange.start) + 12345n).toString();
    const agg2 = aggregate([user(k1[0]!, 'B0', ehk), user(k0[3]!, 'B1')]);
    const single = aggregate([user(k0[4]!, 'C0')]);
    // a user record of shard 1 inside an aggregate sent to shard 0: the KCL drops the aggregate
    const misrouted = aggregate([user(k0[5]!, 'X0'), user(k1[1]!, 'X1')]);
    // magic number but a broken checksum: a plain record
    const corrupt = Uint8Array.from(aggregate([user(k0[6]!, 'Y0')]).data);
    corrupt[corrupt.length - 1] = (corrupt[corrupt.length - 1] ?? 0) ^ 0xff;
    const big = aggregate(Array.from({ length: 25 }, (_, i) => user(k0[7 + (i % 5)]!, `D${i}`)));

    const put = await putRecords(kinesis, stream, [
      { partitionKey: k0[9]!, data: 'P0' },
      agg1,
      { partitionKey: k0[10]!, data: 'P1' },
      agg2,
      single,
      misrouted,
      { partitionKey: k0[6]!, data: corrupt },
      big,
      { partitionKey: k0[11]!, data: 'P2' },
    ]);
    for (const p of put) expect(p.shardId).toBe(s0.shardId);

    const { records } = await drain(await source.openReader(s0.shardId, { type: 'TRIM_HORIZON' }), 4);
    const expected = [
      ['P0', k0[9]],
      ['A0', k0[0]],
      ['A1', k0[1]],
      ['A2', k0[0]],
      ['A3', k0[2]],
      ['P1', k0[10]],
      ['B0', k1[0]],
      ['B1', k0[3]],
      ['C0', k0[4]],
      ['corrupt', k0[6]],
      ...Array.from({ length: 25 }, (_, i) => [`D${i}`, k0[7 + (i % 5)]]),
      ['P2', k0[11]],
    ];
    expect(
      records.map((r) => [
        r.data === corrupt || Buffer.from(r.data).equals(corrupt) ? 'corrupt' : str(r),
        r.partitionKey,
      ]),
    ).toEqual(expected);
    expectIncreasing(records);
    expect(events).toContainEqual({
      type: 'aggregate-dropped',
      shardId: s0.shardId,
      sequenceNumber: put[5]!.sequenceNumber,
      userRecords: 2,
    });

    // positions: sequence number + sub-index, the last user record of each Kinesis record ending in 9s
    const agg1Seq = put[1]!.sequenceNumber;
    expect(records.slice(1, 5).map((r) => r.sequenceNumber)).toEqual([
      encodePosition(agg1Seq, 0),
      encodePosition(agg1Seq, 1),
      encodePosition(agg1Seq, 2),
      encodePosition(agg1Seq, 'last'),
    ]);
    expect(records.slice(1, 5).map((r) => r.subSequenceNumber)).toEqual([0, 1, 2, 3]);
    expect(records[6]!.explicitHashKey).toBe(ehk);
    expect(records[8]!.sequenceNumber).toBe(positionAfter(put[4]!.sequenceNumber));
    expect(new Set(records.slice(1, 5).map((r) => r.arrivalTime)).size).toBe(1);

    // resuming after every position gives exactly the records after it
    for (let cut = 0; cut < records.length; cut++) {
      const rest = await drain(
        await source.openReader(s0.shardId, {
          type: 'AFTER_SEQUENCE_NUMBER',
          sequenceNumber: records[cut]!.sequenceNumber,
        }),
        3,
      );
      expect(
        rest.records.map((r) => r.sequenceNumber),
        `after record ${cut}`,
      ).toEqual(records.slice(cut + 1).map((r) => r.sequenceNumber));
    }

    // 'deliver' keeps the misrouted aggregate; raw mode leaves aggregates alone
    const delivering = new KinesisSource({ client: kinesis, stream, misroutedAggregates: 'deliver' });
    const all = (await drain(await delivering.openReader(s0.shardId, { type: 'TRIM_HORIZON' }))).records;
    expect(all.map(str)).toContain('X1');
    expect(all).toHaveLength(records.length + 2);
    const raw = new KinesisSource({ client: kinesis, stream, deaggregate: false });
    expect((await drain(await raw.openReader(s0.shardId, { type: 'TRIM_HORIZON' }))).records).toHaveLength(9);
  });

  it('recovers from an expired iterator after the last record fetched, or at the original position', async () => {
    const stream = await createTestStream(kinesis, 'expiry', 1);
    const setup = new KinesisSource({ client: kinesis, stream });
    const [shard] = await setup.listShards();
    const shardId = shard!.shardId;
    await putRecords(kinesis, stream, [
      ...Array.from({ length: 30 }, (_, i) => ({ partitionKey: `k${i % 3}`, data: `r${i}` })),
      aggregate(Array.from({ length: 6 }, (_, i) => ({ partitionKey: `k${i}`, data: `agg${i}` }))),
      ...Array.from({ length: 10 }, (_, i) => ({ partitionKey: `k${i % 3}`, data: `s${i}` })),
    ]);
    const reference = (await drain(await setup.openReader(shardId, { type: 'TRIM_HORIZON' }))).records;
    expect(reference).toHaveLength(46);

    /** A client whose GetRecords calls number `expireOn` throw ExpiredIteratorException (once each). */
    const expiringClient = (expireOn: number[]) => {
      const client = newClient();
      let getRecords = 0;
      client.middlewareStack.add(
        (next, context) => async (args) => {
          if (context.commandName === 'GetRecordsCommand' && expireOn.includes(++getRecords)) {
            throw new ExpiredIteratorException({
              message: 'Iterator expired. The iterator was created at time X while right now it is Y',
              $metadata: { httpStatusCode: 400 },
            });
          }
          return next(args);
        },
        { step: 'initialize', name: 'expireIterator' },
      );
      return client;
    };

    // expiry mid-stream: resumes after the last record fetched, nothing lost or repeated
    const events: KinesisSourceEvent[] = [];
    const source = new KinesisSource({
      client: expiringClient([3, 5, 6]),
      stream,
      getRecordsLimit: 4,
      onEvent: (e) => events.push(e),
    });
    const reader = await source.openReader(shardId, { type: 'TRIM_HORIZON' });
    const got = await drain(reader, 4);
    expect(got.records.map((r) => r.sequenceNumber)).toEqual(reference.map((r) => r.sequenceNumber));
    expect(reader.expiredIteratorRecoveries).toBe(3);
    expect(
      events
        .filter((e) => e.type === 'iterator-expired')
        .map((e) => e.type === 'iterator-expired' && e.resumeAfter),
    ).toEqual([
      reference[7]!.kinesisSequenceNumber,
      reference[11]!.kinesisSequenceNumber,
      reference[11]!.kinesisSequenceNumber,
    ]);

    // expiry before any record: the original position, here inside the aggregate (skip still applies)
    const inside = reference.findIndex((r) => r.subSequenceNumber === 2);
    const first = new KinesisSource({ client: expiringClient([1]), stream, getRecordsLimit: 5 });
    const r2 = await first.openReader(shardId, {
      type: 'AFTER_SEQUENCE_NUMBER',
      sequenceNumber: reference[inside]!.sequenceNumber,
    });
    expect((await drain(r2, 5)).records.map((r) => r.sequenceNumber)).toEqual(
      reference.slice(inside + 1).map((r) => r.sequenceNumber),
    );
    expect(r2.expiredIteratorRecoveries).toBe(1);

    // an iterator that keeps expiring is a TransientBackendError
    const always = new KinesisSource({ client: expiringClient([1, 2, 3, 4, 5, 6]), stream });
    await expect(
      (await always.openReader(shardId, { type: 'TRIM_HORIZON' })).read(10),
    ).rejects.toBeInstanceOf(TransientBackendError);
  });

  it('gives complete, exact reads with 10% of Kinesis calls throttled or failing', async () => {
    const stream = await createTestStream(kinesis, 'throttle', 2);
    const faulty = newClient();
    const faults = injectTransientFaults(faulty, { rate: 0.1, seed: 20260101 });
    const inputs = Array.from({ length: 1200 }, (_, i) => ({ partitionKey: `k${i % 97}`, data: `v${i}` }));
    const putRetries: unknown[] = [];
    const put = await putRecords(faulty, stream, inputs, {
      ...FAST_RETRY,
      maxBatchRecords: 100,
      onRetry: (e) => putRetries.push(e),
    });
    const putFaults = faults.stats.injected;
    expect(putFaults).toBeGreaterThan(0);
    expect(putRetries).toHaveLength(putFaults);
    expect(new Set(put.map((p) => p.sequenceNumber)).size).toBe(1200);

    const events: KinesisSourceEvent[] = [];
    const source = new KinesisSource({
      client: faulty,
      stream,
      retry: FAST_RETRY,
      ...UNPACED,
      getRecordsLimit: 20,
      onEvent: (e) => events.push(e),
    });
    const clean = new KinesisSource({ client: kinesis, stream });
    const shards = await source.listShards();
    expect(shards).toHaveLength(2);
    let total = 0;
    for (const shard of shards) {
      const got = (await drain(await source.openReader(shard.shardId, { type: 'TRIM_HORIZON' }), 20)).records;
      const want = (await drain(await clean.openReader(shard.shardId, { type: 'TRIM_HORIZON' }), 1000))
        .records;
      expect(got.map((r) => [r.sequenceNumber, str(r), r.partitionKey])).toEqual(
        want.map((r) => [r.sequenceNumber, str(r), r.partitionKey]),
      );
      total += got.length;
    }
    expect(total).toBe(1200);
    // every injected fault reached floe's code (not hidden by the SDK's retries) and was retried once
    const readFaults = faults.stats.injected - putFaults;
    expect(readFaults).toBeGreaterThan(0);
    expect(events.filter((e) => e.type === 'retry')).toHaveLength(readFaults);
    expect(faults.stats.byError.ProvisionedThroughputExceededException).toBeGreaterThan(0);
    const rate = faults.stats.injected / faults.stats.calls;
    expect(rate).toBeGreaterThan(0.03);
    expect(rate).toBeLessThan(0.2);
    console.log(
      `[kinesis-source] faults: ${faults.stats.injected} of ${faults.stats.calls} calls (${JSON.stringify(faults.stats.byError)})`,
    );

    // sustained throttling: bounded retries, then a TransientBackendError
    faults.rate = 1;
    const stubborn = new KinesisSource({ client: faulty, stream, retry: { ...FAST_RETRY, maxRetries: 3 } });
    await expect(stubborn.listShards()).rejects.toBeInstanceOf(TransientBackendError);
    await expect(
      putRecords(faulty, stream, [{ partitionKey: 'a', data: 'b' }], { ...FAST_RETRY, maxRetries: 2 }),
    ).rejects.toBeInstanceOf(TransientBackendError);
    faults.remove();
  });

  it('paces GetRecords on a shard: 200 ms apart, 1 s after a throttle, up to 10,000 records a call', async () => {
    const stream = await createTestStream(kinesis, 'pacing', 1);
    await putRecords(
      kinesis,
      stream,
      Array.from({ length: 1200 }, (_, i) => ({ partitionKey: `k${i % 13}`, data: `v${i}` })),
    );
    const reference = (
      await drain(
        await new KinesisSource({ client: kinesis, stream, ...UNPACED }).openReader(
          (await new KinesisSource({ client: kinesis, stream }).listShards())[0]!.shardId,
          { type: 'TRIM_HORIZON' },
        ),
      )
    ).records.map((r) => r.sequenceNumber);
    expect(reference).toHaveLength(1200);

    // Defaults: after a first GetRecords of the read's 100, one of 10,000 serves reads of 100 from
    // its buffer.
    const t = virtualTime();
    const { client, calls } = recordingClient(t.clock);
    const source = new KinesisSource({ client, stream, clock: t.clock, sleep: t.sleep });
    const [shard] = await source.listShards();
    const reader = await source.openReader(shard!.shardId, { type: 'TRIM_HORIZON' });
    const got = await drain(reader, 100);
    expect(got.records.map((r) => r.sequenceNumber)).toEqual(reference);
    expect(got.reads).toBe(13);
    // 100 records, the other 1,100, then the empty read that finds the shard caught up, 200 ms apart
    expect(calls.map((c) => c.limit)).toEqual([100, 10_000, 10_000]);
    expect(gapsOf(calls)).toEqual([200, 200]);
    // A new reader of the shard from the same source shares its pacing; its first call, a peek,
    // asks for one record only.
    const again = await source.openReader(shard!.shardId, { type: 'LATEST' });
    await again.read(1);
    expect(gapsOf(calls)).toEqual([200, 200, 200]);
    expect(calls.at(-1)?.limit).toBe(1);

    // Smaller calls, the third one throttled: each call waits 200 ms after the previous one, and
    // 1 s after the throttled one (on top of the retry's own backoff, which it overlaps).
    const t2 = virtualTime();
    const throttled = recordingClient(t2.clock, (n) => n === 3);
    const events: KinesisSourceEvent[] = [];
    const small = new KinesisSource({
      client: throttled.client,
      stream,
      clock: t2.clock,
      sleep: t2.sleep,
      retry: { sleep: t2.sleep, random: () => 0.5 },
      getRecordsLimit: 500,
      onEvent: (e) => events.push(e),
    });
    const smallGot = await drain(await small.openReader(shard!.shardId, { type: 'TRIM_HORIZON' }), 100);
    expect(smallGot.records.map((r) => r.sequenceNumber)).toEqual(reference);
    // 100 (the first call asks for the read's limit), 500, throttled, 500, the last 100, then the
    // empty read that finds the shard caught up
    expect(throttled.calls.map((c) => [c.limit, c.throttled])).toEqual([
      [100, false],
      [500, false],
      [500, true],
      [500, false],
      [500, false],
      [500, false],
    ]);
    expect(gapsOf(throttled.calls)).toEqual([200, 200, 1000, 200, 200]);
    expect(events.filter((e) => e.type === 'retry')).toHaveLength(1);

    expect(() => new KinesisSource({ client, stream, minGetRecordsIntervalMs: -1 })).toThrow(
      ConfigurationError,
    );
    expect(() => new KinesisSource({ client, stream, getRecordsLimit: 10_001 })).toThrow(ConfigurationError);
  });

  it('a read given a deadline stops retrying a throttled shard at it: empty, behind, at the deadline; nothing lost', async () => {
    const stream = await createTestStream(kinesis, 'deadline', 1);
    await putRecords(
      kinesis,
      stream,
      Array.from({ length: 50 }, (_, i) => ({ partitionKey: `k${i % 7}`, data: `v${i}` })),
    );
    const t = virtualTime();
    let throttling = true;
    const { client, calls } = recordingClient(t.clock, () => throttling);
    const events: KinesisSourceEvent[] = [];
    const source = new KinesisSource({
      client,
      stream,
      clock: t.clock,
      sleep: t.sleep,
      retry: { sleep: t.sleep },
      onEvent: (e) => events.push(e),
    });
    const [shard] = await source.listShards();
    const reader = await source.openReader(shard!.shardId, { type: 'TRIM_HORIZON' });
    const deadline = t.now + 3_000;
    const result = await reader.read(100, { timeLeftMs: 3_000 });
    expect(result.records).toEqual([]);
    expect(result.shardEnded).toBe(false);
    // behind, so not caught up: an idle-shard watermark must not advance on it
    expect(result.millisBehindLatest).toBeGreaterThan(0);
    expect(t.now).toBe(deadline);
    // One call a second at most while throttled, none after the deadline (the default retries,
    // 8 with up to 5 s of backoff each, would have taken far longer).
    expect(calls.length).toBeGreaterThanOrEqual(3);
    expect(calls.length).toBeLessThanOrEqual(4);
    for (const gap of gapsOf(calls)) expect(gap).toBeGreaterThanOrEqual(1000);
    expect(calls.every((c) => c.at <= deadline)).toBe(true);
    expect(events.filter((e) => e.type === 'read-deadline')).toHaveLength(1);

    // The iterator did not move: the next read, unthrottled, starts at the first record.
    throttling = false;
    const rest = await drain(reader, 100);
    expect(rest.records.map(str)).toEqual(Array.from({ length: 50 }, (_, i) => `v${i}`));
  });

  it('putRecords batches by count and by bytes', async () => {
    const stream = await createTestStream(kinesis, 'batches', 1);
    const calls: number[] = [];
    const client = newClient();
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutRecordsCommand') {
          calls.push((args.input as { Records: unknown[] }).Records.length);
        }
        return next(args);
      },
      { step: 'initialize', name: 'countBatches' },
    );
    await putRecords(
      client,
      stream,
      Array.from({ length: 1001 }, (_, i) => ({ partitionKey: `k${i}`, data: 'x' })),
    );
    expect(calls).toEqual([500, 500, 1]);
    calls.length = 0;
    const chunk = 'y'.repeat(100_000);
    const out = await putRecords(
      client,
      stream,
      Array.from({ length: 30 }, (_, i) => ({ partitionKey: `k${i}`, data: chunk })),
      { maxBatchBytes: 1_000_000 },
    );
    expect(out).toHaveLength(30);
    expect(calls).toEqual([9, 9, 9, 3]); // 9 * (100,000 data + 2-3 partition key bytes) <= 1,000,000
  });
});
