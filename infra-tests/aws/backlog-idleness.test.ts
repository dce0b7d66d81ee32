/**
 * Regression test: an empty read while the shard is still behind must not count as "caught up".
 *
 * Kinesis GetRecords may return no records although the shard has more further on
 * (MillisBehindLatest > 0; AWS documents it, e.g. for iterators in sparse or old parts of a shard),
 * and KinesisShardReader.read passes such a response on as an empty ReadResult. The worker used to
 * call `task.processBatch(read.records, backend, clock(), { shardEnded })` without `caughtUp`, and
 * ShardTask defaults an empty batch to caught up: a job catching up on records that arrived longer
 * ago than the idle timeout jumped its watermark by processing time at such a read, fired the
 * windows early and turned the rest of the backlog into late data (this test, before the fix: 200
 * of 300 records late, 20 of 50 windows emitted). Fixed in lib/runtime/worker.ts by passing
 * `caughtUp: read.millisBehindLatest === 0` (commit 3e2079f, the diff proposed with this test).
 *
 * kinesis-local never answers empty mid-shard, so the source here injects one such response
 * (records: [], millisBehindLatest: 60_000) between two reads of a real KinesisSource.
 */
import { afterAll, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import { KinesisSource, putRecords } from '../../lib/aws/kinesis-source.ts';
import {
  compile,
  MemoryBackend,
  type Output,
  type ReadResult,
  type ShardReader,
  type ShardSource,
} from '../../lib/core/index.ts';
import { runJob } from '../../lib/runtime/local-runner.ts';
import { simulate } from '../../lib/runtime/simulate.ts';
import { kinesisClient, setupAwsTestEnv } from '../env/aws-clients.ts';
import { createTestStream, deleteTestStream } from '../env/kinesis-streams.ts';

const env = await setupAwsTestEnv();
const kinesis = kinesisClient(env);
const streams: string[] = [];
afterAll(async () => {
  await Promise.all(streams.map((s) => deleteTestStream(kinesis, s)));
  kinesis.destroy();
});

it('an empty read while behind (MillisBehindLatest > 0) does not fire idleness in the middle of a backlog', async () => {
  const stream = await createTestStream(kinesis, 'backlog', 1);
  streams.push(stream);
  // 300 in-order views of 5 pages over 10 minutes of event time.
  const start = Date.UTC(2026, 0, 1);
  const views = Array.from({ length: 300 }, (_, i) => ({
    page: `/p${i % 5}`,
    user: `u${i % 7}`,
    ts: start + i * 2_000,
  }));
  await putRecords(
    kinesis,
    stream,
    views.map((v) => ({ partitionKey: v.page, data: JSON.stringify(v) })),
  );

  // Read everything back (real positions and arrival times) for simulate.
  const source = new KinesisSource({ client: kinesis, stream });
  const [shard] = await source.listShards();
  const reader = await source.openReader(shard!.shardId, { type: 'TRIM_HORIZON' });
  const records = (await reader.read(1000)).records;
  await reader.close();
  expect(records).toHaveLength(300);
  // The job runs an hour after the records arrived (a backlog).
  const now = Math.max(...records.map((r) => r.arrivalTime)) + 3_600_000;

  // The second read of every reader answers as Kinesis may: no records, still behind.
  const withEmptyRead: ShardSource = {
    listShards: () => source.listShards(),
    async openReader(shardId, position) {
      const inner = await source.openReader(shardId, position);
      let reads = 0;
      const wrapped: ShardReader = {
        read: async (limit): Promise<ReadResult> =>
          ++reads === 2 ? { records: [], millisBehindLatest: 60_000, shardEnded: false } : inner.read(limit),
        close: () => inner.close(),
      };
      return wrapped;
    },
  };
  const published = new Map<string, Output>();
  await runJob(
    {
      job: 'backlog',
      plan: compile(pageViews),
      source: withEmptyRead,
      backend: new MemoryBackend(),
      sink: {
        publish: async (outputs) => {
          for (const o of outputs) published.set(o.id, o);
        },
      },
      clock: () => now,
    },
    { untilIdle: true, batchSize: 100, idlePollMs: 1, roundPauseMs: 1 },
  );

  const expected: Output[] = [];
  const decoder = new TextDecoder();
  await simulate(
    pageViews,
    [
      ...records.map((r) =>
        JSON.stringify({
          partitionKey: r.partitionKey,
          raw: decoder.decode(r.data as Uint8Array),
          shard: 0,
          arrival: r.arrivalTime,
        }),
      ),
      JSON.stringify({ processingTime: now }),
    ],
    { shards: 1, onOutput: (o) => expected.push(o) },
  );
  const summary = (outputs: readonly Output[]) => {
    const late = outputs.filter((o) => o.sink === 'late-page-views').length;
    const counts = new Map<string, number>();
    for (const o of outputs) {
      if (o.sink !== 'page-view-counts') continue;
      const v = o.value as { page: string; windowStart: number; views: number };
      counts.set(`${v.page}@${v.windowStart}`, v.views);
    }
    return { late, counts: Object.fromEntries([...counts].sort()) };
  };
  expect(summary(expected).late).toBe(0);
  expect(summary([...published.values()])).toEqual(summary(expected));
});
