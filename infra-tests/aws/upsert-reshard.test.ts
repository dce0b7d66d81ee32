/**
 * The DynamoDB upsert sink across a real reshard (kinesis-local, moto): a job's page-view counts
 * go to a table while its one shard is split. The parent shard's worker fires the first window;
 * after the split, late views (within the allowed lateness) reach the children, whose workers
 * fire the window again with the whole count. The children publish at their lineage depth (1),
 * so their results replace the parent's (another shard, a deeper rank), and a late publish of
 * the parent's commit, as a parent worker that stalled past its lease would make it, does not
 * bring the parent's older count back (docs/protocol.md, "Upsert order"). The sink's condition
 * itself, case by case, is tested in sinks.test.ts; this shows the depth a real child worker
 * gives it.
 */
import { SplitShardCommand } from '@aws-sdk/client-kinesis';
import { ScanCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAwsJob } from '../../lib/aws/job.ts';
import { KinesisSource, putRecords } from '../../lib/aws/kinesis-source.ts';
import { createBucket, createTables } from '../../lib/aws/resources.ts';
import {
  boundedOutOfOrderness,
  compile,
  count,
  minutes,
  type Output,
  type PublishContext,
  pipeline,
  type Sink,
  tumbling,
} from '../../lib/core/index.ts';
import { runJob } from '../../lib/runtime/local-runner.ts';
import { type AwsClients, awsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { eventually } from '../env/eventually.ts';
import { createTestStream, deleteTestStream, waitStreamActive } from '../env/kinesis-streams.ts';
import { jobClients } from './job-clients.ts';
import { createUpsertTable } from './upsert-tables.ts';

const env = await setupAwsTestEnv();
let admin: AwsClients;
const streams: string[] = [];

beforeAll(() => {
  admin = awsClients(env);
});
afterAll(async () => {
  if (admin === undefined) return;
  await Promise.all(streams.map((s) => deleteTestStream(admin.kinesis, s)));
  admin.destroy();
});

interface View {
  readonly page: string;
  readonly ts: number;
}

const views = pipeline('reshard-views');
views
  .source<View>()
  .withTimestamps((v) => v.ts, boundedOutOfOrderness(0))
  .keyBy((v) => v.page)
  .window(tumbling({ size: minutes(1) }))
  .allowedLateness(minutes(10))
  .aggregate(count<View>(), ({ key, window, result }) => ({
    page: key,
    windowStart: window.start,
    views: result,
  }))
  .sink('counts');

const PAGES = Array.from({ length: 12 }, (_, i) => `/p${i}`);
/** The first minute's window: [T, T + 1 min). */
const T = Date.UTC(2026, 0, 1);
const MAX_HASH = (2n ** 128n - 1n).toString();

/** A publish the sink under test received: its outputs and context. */
interface Publish {
  readonly outputs: readonly Output[];
  readonly context: PublishContext | undefined;
}

/** The sink, recording what it is given. */
function recording(sink: Sink, into: Publish[]): Sink {
  return {
    publish(outputs, context) {
      into.push({ outputs, context });
      return sink.publish(outputs, context);
    },
  };
}

const shardOf = (o: Output): string => o.id.split('/')[1]!;

describe('DynamoDB upsert sink across a split of the source stream', () => {
  it("a split child's re-fired window replaces its parent's result, and the parent's late publish does not bring it back", async () => {
    const stream = await createTestStream(admin.kinesis, 'upsert-reshard', 1);
    streams.push(stream);
    const job = uniqueName('reshard');
    const stateTable = uniqueName('reshard-state');
    const controlTable = uniqueName('reshard-control');
    const table = uniqueName('reshard-counts');
    const bucket = uniqueName('floe-reshard');
    await Promise.all([
      createBucket(admin.s3, bucket),
      createTables(admin.dynamodb, stateTable, controlTable),
      createUpsertTable(admin.dynamodb, table, 'page', 'windowStart'),
    ]);
    const put = (records: Array<{ partitionKey: string; view: View; explicitHashKey?: string }>) =>
      putRecords(
        admin.kinesis,
        stream,
        records.map((r) => ({
          partitionKey: r.partitionKey,
          data: JSON.stringify(r.view),
          ...(r.explicitHashKey === undefined ? {} : { explicitHashKey: r.explicitHashKey }),
        })),
      );
    const sinks = [`counts=dynamodb:${table}?key=page,windowStart`];
    const open = (clients: AwsClients) =>
      openAwsJob(compile(views), { job, stream, stateTable, controlTable, bucket, sinks }, clients);
    /** Runs the job until every shard is caught up; returns what its sink was given. */
    const run = async (name: string): Promise<Publish[]> => {
      const published: Publish[] = [];
      const bundle = jobClients(env);
      try {
        const runtime = open(bundle);
        await runJob(
          { ...runtime, sink: recording(runtime.sink, published), clock: () => T + 86_400_000 },
          { owner: name, untilIdle: true, leaseTtlMs: 60_000, idlePollMs: 1, roundPauseMs: 20 },
        );
      } finally {
        bundle.destroy();
      }
      return published;
    };
    const counts = async (): Promise<Map<string, { views: number; shard: string; rank: string }>> => {
      const res = await admin.ddb.send(new ScanCommand({ TableName: table }));
      return new Map(
        (res.Items ?? [])
          .filter((item) => item.windowStart === T)
          .map((item) => [
            String(item.page),
            {
              views: Number(item.views),
              shard: String(item.floeOutputId).split('/')[1]!,
              rank: String(item.floeRank),
            },
          ]),
      );
    };

    // One view per page in the first minute, then a view two minutes on: the watermark passes
    // the first window's end and the parent shard's worker fires it (1 view per page).
    await put([
      ...PAGES.map((page, i) => ({ partitionKey: page, view: { page, ts: T + 1_000 + i } })),
      { partitionKey: 'tick', view: { page: 'tick', ts: T + 120_000 } },
    ]);
    const fromParent = await run('parent');
    const [parent] = await new KinesisSource({ client: admin.kinesis, stream }).listShards();
    const parentOutputs = fromParent.flatMap((p) => p.outputs).filter((o) => o.sink === 'counts');
    expect(parentOutputs).toHaveLength(PAGES.length);
    expect(fromParent.every((p) => p.context?.depth === 0)).toBe(true);
    const afterParent = await counts();
    expect([...afterParent.values()].map((c) => [c.views, c.shard])).toEqual(
      PAGES.map(() => [1, parent!.shardId]),
    );

    // Split the shard; late views of the first minute (within the allowed lateness) and a view
    // in each child that moves its watermark on.
    const mid = (2n ** 127n).toString();
    await admin.kinesis.send(
      new SplitShardCommand({ StreamName: stream, ShardToSplit: parent!.shardId, NewStartingHashKey: mid }),
    );
    await waitStreamActive(admin.kinesis, stream);
    const children = await eventually('the split children', async () => {
      const shards = await new KinesisSource({ client: admin.kinesis, stream }).listShards();
      const list = shards.filter((s) => s.parentShardIds.includes(parent!.shardId));
      return list.length === 2 ? list : undefined;
    });
    await put([
      ...PAGES.map((page, i) => ({ partitionKey: page, view: { page, ts: T + 2_000 + i } })),
      // One key per child: a key in both would break co-partitioning (floe refuses it).
      { partitionKey: 'tick-low', explicitHashKey: '0', view: { page: 'tick-low', ts: T + 180_000 } },
      { partitionKey: 'tick-high', explicitHashKey: MAX_HASH, view: { page: 'tick-high', ts: T + 180_000 } },
    ]);
    const fromChildren = await run('children');
    const childIds = new Set(children.map((c) => c.shardId));
    const childOutputs = fromChildren.flatMap((p) => p.outputs).filter((o) => o.sink === 'counts');
    expect(childOutputs.filter((o) => (o.value as { windowStart: number }).windowStart === T)).toHaveLength(
      PAGES.length,
    );
    // The children's workers publish at depth 1 (the parent, finished, publishes nothing more).
    for (const p of fromChildren) {
      const shards = new Set(p.outputs.map(shardOf));
      if (shards.size > 0 && [...shards].every((s) => childIds.has(s)))
        expect(p.context).toEqual({ depth: 1 });
    }
    const afterChildren = await counts();
    expect([...afterChildren.values()].every((c) => c.views === 2 && childIds.has(c.shard))).toBe(true);
    expect(afterChildren.size).toBe(PAGES.length);
    expect([...afterChildren.values()].every((c) => c.rank.endsWith('/0000000000000001'))).toBe(true);

    // The parent's worker, stalled past its lease, publishes its commit again afterwards, at its
    // depth: every item keeps the children's count.
    await open(admin).sink.publish(parentOutputs, { depth: 0 });
    expect(await counts()).toEqual(afterChildren);
  });
});
