/**
 * The AWS sinks against the emulators (kinesis-local, moto) or LocalStack / AWS: every sink
 * publishes, and publishing the same outputs again leaves the same final contents (DynamoDB:
 * same items; S3: same objects; Kinesis: duplicates carry the same id). Batching above the
 * request limits, partial-failure retries (injected through client middleware, since the
 * emulators never throttle), routing and spec-built routing sinks.
 */
import {
  CreateTableCommand,
  type DynamoDBClient,
  PutItemCommand,
  ScanCommand as ScanItemsCommand,
  waitUntilTableExists,
} from '@aws-sdk/client-dynamodb';
import type { KinesisClient, PutRecordsCommandInput, PutRecordsCommandOutput } from '@aws-sdk/client-kinesis';
import type { S3Client } from '@aws-sdk/client-s3';
import { ScanCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBucket, createStream } from '../../lib/aws/resources.ts';
import {
  DynamoDbUpsertSink,
  KinesisStreamSink,
  outputOrder,
  outputRank,
  putKinesisRecords,
  RoutingSink,
  S3ObjectSink,
  SinkOutputError,
} from '../../lib/aws/sinks.ts';
import { routingSinkFromSpecs } from '../../lib/aws/sinks-config.ts';
import { ConfigurationError, TransientBackendError } from '../../lib/core/errors.ts';
import type { Output } from '../../lib/core/ports.ts';
import {
  type AwsClients,
  awsClients,
  dynamoDbClient,
  kinesisClient,
  s3Client,
  setupAwsTestEnv,
  uniqueName,
} from '../env/aws-clients.ts';
import { readStreamRecords } from '../env/kinesis-streams.ts';
import { readObjects } from './s3-objects.ts';
import { createUpsertTable } from './upsert-tables.ts';

const env = await setupAwsTestEnv();
let clients: AwsClients;
const extraClients: { destroy(): void }[] = [];

beforeAll(() => {
  clients = awsClients(env);
});
afterAll(() => {
  clients?.destroy();
  for (const c of extraClients) c.destroy();
});

const FAST_RETRY = { baseDelayMs: 1, maxDelayMs: 5 };

/** Outputs of one commit, as a ShardTask would produce them. */
function commitOutputs(
  job: string,
  shard: string,
  commit: number,
  sink: string,
  values: unknown[],
): Output[] {
  return values.map((value, i) => ({ id: `${job}/${shard}/${commit}/${i}`, sink, value }));
}

interface PageViewCount {
  page: string;
  windowStart: number;
  windowEnd: number;
  views: number;
}

const windowResult = (page: string, windowStart: number, views: number): PageViewCount => ({
  page,
  windowStart,
  windowEnd: windowStart + 60_000,
  views,
});

// ---- Kinesis helpers ----

interface KinesisRecord {
  id: string;
  value?: unknown;
  partitionKey: string;
}

/** The sink's records in the stream (readStreamRecords): the id and value of each record's JSON data. */
async function readStream(kinesis: KinesisClient, stream: string): Promise<KinesisRecord[]> {
  return (await readStreamRecords(kinesis, stream)).map((r) => ({
    ...(JSON.parse(r.data) as { id: string; value?: unknown }),
    partitionKey: r.partitionKey,
  }));
}

/** Counts PutRecords requests (records, bytes) and can fail chosen records of a request. */
function instrumentKinesis(
  client: KinesisClient,
  fail?: (call: number, index: number) => boolean,
): { calls: { records: number; bytes: number }[] } {
  const calls: { records: number; bytes: number }[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      if (context.commandName !== 'PutRecordsCommand') return next(args);
      const input = args.input as PutRecordsCommandInput;
      const records = input.Records ?? [];
      const call = calls.length;
      calls.push({
        records: records.length,
        bytes: records.reduce(
          (n, r) => n + (r.Data?.length ?? 0) + Buffer.byteLength(r.PartitionKey ?? '', 'utf8'),
          0,
        ),
      });
      if (fail === undefined) return next(args);
      // Send only the records that "succeed"; report the others as throttled, in place.
      const failed = records.map((_, i) => fail(call, i));
      const sent = records.filter((_, i) => !failed[i]);
      let results: NonNullable<PutRecordsCommandOutput['Records']> = [];
      let response: unknown;
      if (sent.length > 0) {
        const res = await next({ ...args, input: { ...input, Records: sent } });
        results = [...((res.output as PutRecordsCommandOutput).Records ?? [])];
        response = res.response;
      }
      const merged = failed.map((f) =>
        f
          ? { ErrorCode: 'ProvisionedThroughputExceededException', ErrorMessage: 'injected' }
          : results.shift()!,
      );
      const output: PutRecordsCommandOutput = {
        $metadata: {},
        FailedRecordCount: merged.filter((r) => r.ErrorCode !== undefined).length,
        Records: merged,
      };
      return { output, response } as Awaited<ReturnType<typeof next>>;
    },
    { step: 'initialize', name: 'sinkTestFaults' },
  );
  return { calls };
}

// ---- DynamoDB helpers ----

async function createResultsTable(dynamodb: DynamoDBClient): Promise<string> {
  const table = uniqueName('page-view-counts');
  await createUpsertTable(dynamodb, table, 'page', 'windowStart');
  await waitUntilTableExists({ client: dynamodb, maxWaitTime: 60 }, { TableName: table });
  return table;
}

async function scan(table: string): Promise<Record<string, unknown>[]> {
  const items: Record<string, unknown>[] = [];
  let start: Record<string, unknown> | undefined;
  do {
    const res = await clients.ddb.send(
      new ScanCommand({ TableName: table, ConsistentRead: true, ExclusiveStartKey: start }),
    );
    items.push(...(res.Items ?? []));
    start = res.LastEvaluatedKey;
  } while (start !== undefined);
  const key = (i: Record<string, unknown>) => `${String(i.page)}#${String(i.windowStart).padStart(15, '0')}`;
  return items.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

/** Counts BatchWriteItem requests; the first `unprocess` calls write only half and return the rest. */
function instrumentDynamo(client: DynamoDBClient, unprocess = 0): { calls: number[] } {
  const calls: number[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      if (context.commandName !== 'BatchWriteItemCommand') return next(args);
      const input = args.input as { RequestItems: Record<string, unknown[]> };
      const [table, requests] = Object.entries(input.RequestItems)[0]!;
      calls.push(requests.length);
      if (calls.length > unprocess || requests.length < 2) return next(args);
      const half = Math.floor(requests.length / 2);
      const res = await next({
        ...args,
        input: { ...input, RequestItems: { [table]: requests.slice(0, half) } },
      });
      (res.output as { UnprocessedItems?: Record<string, unknown[]> }).UnprocessedItems = {
        [table]: requests.slice(half),
      };
      return res;
    },
    { step: 'initialize', name: 'sinkTestUnprocessed' },
  );
  return { calls };
}

// ---- S3 helpers ----

function countPuts(client: S3Client): { puts: string[]; gets: string[] } {
  const seen = { puts: [] as string[], gets: [] as string[] };
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const key = (args.input as { Key?: string }).Key ?? '';
      if (context.commandName === 'PutObjectCommand') seen.puts.push(key);
      if (context.commandName === 'GetObjectCommand') seen.gets.push(key);
      return next(args);
    },
    { step: 'initialize', name: 'sinkTestCount' },
  );
  return seen;
}

function own<T extends { destroy(): void }>(client: T): T {
  extraClients.push(client);
  return client;
}

// ---- tests ----

describe('KinesisStreamSink', () => {
  it('writes {"id","value"} records; a republish repeats them with the same ids', async () => {
    const stream = uniqueName('sink-kinesis');
    await createStream(clients.kinesis, stream, 2);
    const sink = new KinesisStreamSink({
      client: clients.kinesis,
      stream,
      partitionKey: (v, o) => (v as PageViewCount | undefined)?.page ?? o.id,
    });
    const outputs = commitOutputs('job-k', 'shardId-000000000000', 7, 'counts', [
      windowResult('/home', 0, 3),
      windowResult('/cart', 0, 1),
      windowResult('/home', 60_000, 2),
      undefined,
    ]);
    await sink.publish(outputs);
    const first = await readStream(clients.kinesis, stream);
    expect(first).toHaveLength(4);
    // An undefined value is null, as in floe simulate's lines and the embedded sinks.
    expect(new Map(first.map((r) => [r.id, r.value]))).toEqual(
      new Map(outputs.map((o) => [o.id, o.value ?? null])),
    );
    expect(first.find((r) => r.id === outputs[0]!.id)?.partitionKey).toBe('/home');
    expect(first.find((r) => r.id === outputs[3]!.id)).toHaveProperty('value', null);

    await sink.publish(outputs);
    const second = await readStream(clients.kinesis, stream);
    expect(second).toHaveLength(8);
    const byId = new Map<string, unknown[]>();
    for (const r of second) byId.set(r.id, [...(byId.get(r.id) ?? []), r.value]);
    expect([...byId.keys()].sort()).toEqual(outputs.map((o) => o.id).sort());
    for (const [id, values] of byId) {
      expect(values, id).toHaveLength(2);
      expect(values[0]).toEqual(values[1]);
    }
  });

  it('splits above 500 records per request (5 MiB splitting: lib/aws/sinks.test.ts), and rejects a record over 1 MiB before sending', async () => {
    const stream = uniqueName('sink-kinesis-batch');
    await createStream(clients.kinesis, stream, 2);
    const client = own(kinesisClient(env));
    const { calls } = instrumentKinesis(client);
    const sink = new KinesisStreamSink({ client, stream });

    const many = commitOutputs(
      'job-b',
      'shardId-000000000001',
      1,
      'events',
      Array.from({ length: 1_201 }, (_, i) => ({ n: i })),
    );
    await sink.publish(many);
    expect(calls.map((c) => c.records)).toEqual([500, 500, 201]);

    const records = await readStream(clients.kinesis, stream);
    expect(new Set(records.map((r) => r.id)).size).toBe(1_201);
    expect(records).toHaveLength(1_201);

    calls.length = 0;
    const tooBig = commitOutputs('job-b', 'shardId-000000000001', 3, 'events', [
      { ok: true },
      { big: 'y'.repeat(1_100_000) },
    ]);
    await expect(sink.publish(tooBig)).rejects.toThrow(SinkOutputError);
    await expect(sink.publish(tooBig)).rejects.toThrow(/1048576 bytes/);
    expect(calls).toHaveLength(0);
  });

  it('resends failed records with backoff; gives up with a TransientBackendError', async () => {
    const stream = uniqueName('sink-kinesis-retry');
    await createStream(clients.kinesis, stream, 1);
    const client = own(kinesisClient(env));
    // Call 0: every third record throttled; call 1: the first of the resent ones again.
    const { calls } = instrumentKinesis(client, (call, i) =>
      call === 0 ? i % 3 === 0 : call === 1 && i === 0,
    );
    const sink = new KinesisStreamSink({ client, stream, retry: FAST_RETRY });
    const outputs = commitOutputs(
      'job-r',
      'shardId-000000000000',
      4,
      'events',
      Array.from({ length: 30 }, (_, i) => i),
    );
    await sink.publish(outputs);
    expect(calls.map((c) => c.records)).toEqual([30, 10, 1]);
    const records = await readStream(clients.kinesis, stream);
    expect(records.map((r) => r.id).sort()).toEqual(outputs.map((o) => o.id).sort());

    const stuckClient = own(kinesisClient(env));
    const stuck = instrumentKinesis(stuckClient, () => true);
    const stuckSink = new KinesisStreamSink({
      client: stuckClient,
      stream,
      retry: { ...FAST_RETRY, maxAttempts: 4 },
    });
    const error = await stuckSink.publish(outputs.slice(0, 1)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransientBackendError);
    expect((error as Error).message).toMatch(/1 record\(s\) still failed after 4 attempts/);
    expect((error as Error).message).toMatch(/ProvisionedThroughputExceededException/);
    expect(stuck.calls.map((c) => c.records)).toEqual([1, 1, 1, 1]);
  });

  it('putKinesisRecords: resends only the failed records, and counts those a later record of their key overtook', async () => {
    const stream = uniqueName('put-records-order');
    await createStream(clients.kinesis, stream, 1);
    const client = own(kinesisClient(env));
    // Call 0: a1 and b2 throttled; a2 (after a1) is written, nothing of b comes after b2.
    const { calls } = instrumentKinesis(client, (call, i) => call === 0 && (i === 0 || i === 3));
    const entry = (key: string, n: number) => ({ PartitionKey: key, Data: Buffer.from(`${key}${n}`) });
    const result = await putKinesisRecords(
      { client, target: { StreamName: stream }, stream, retry: FAST_RETRY, missingHint: '', exhausted: '' },
      [entry('a', 1), entry('a', 2), entry('b', 1), entry('b', 2)],
    );
    expect(calls.map((c) => c.records)).toEqual([4, 2]);
    expect(result).toEqual({ retried: 2, overtaken: 1 });
    expect((await readStreamRecords(clients.kinesis, stream)).map((r) => r.data)).toEqual([
      'a2',
      'b1',
      'a1',
      'b2',
    ]);
  });

  it('reports a missing stream as a ConfigurationError', async () => {
    const sink = new KinesisStreamSink({ client: clients.kinesis, stream: uniqueName('no-such-stream') });
    await expect(sink.publish(commitOutputs('j', 's', 1, 'x', [1]))).rejects.toThrow(ConfigurationError);
  });
});

describe('DynamoDbUpsertSink', () => {
  const key = (v: unknown) => ({
    page: (v as PageViewCount).page,
    windowStart: (v as PageViewCount).windowStart,
  });

  /** The item fields the sink adds to a value: the output id and its order (sinks.ts outputOrder). */
  const stored = (value: object, output: Output) => ({
    ...value,
    floeOutputId: output.id,
    floeOrder: outputOrder(output.id),
  });

  it('upserts by key (last write wins) and a republish leaves the same items', async () => {
    const table = await createResultsTable(clients.dynamodb);
    const sink = new DynamoDbUpsertSink({ client: clients.dynamodb, table, key });
    // Commit 1 fires two windows; commit 2 re-fires /home@0 with a late event (views 3 -> 4).
    const c1 = commitOutputs('job-d', 'shardId-000000000000', 1, 'page-view-counts', [
      windowResult('/home', 0, 3),
      windowResult('/cart', 0, 1),
    ]);
    const c2 = commitOutputs('job-d', 'shardId-000000000000', 2, 'page-view-counts', [
      windowResult('/home', 0, 4),
      windowResult('/home', 60_000, 2),
    ]);
    await sink.publish(c1);
    await sink.publish(c2);
    const items = await scan(table);
    expect(items).toEqual([
      stored(windowResult('/cart', 0, 1), c1[1]!),
      stored(windowResult('/home', 0, 4), c2[0]!),
      stored(windowResult('/home', 60_000, 2), c2[1]!),
    ]);
    expect(items[1]!.floeOrder).toBe('job-d/shardId-000000000000/0000000000000002/0000000000000000');

    // Recovery republishes the last commit (crash before markPublished): same items.
    await sink.publish(c2);
    expect(await scan(table)).toEqual(items);
    // Both commits in one publish (with a key written twice in the batch): same items.
    await sink.publish([...c1, ...c2]);
    expect(await scan(table)).toEqual(items);
  });

  it('a late publish of an earlier commit (a stalled worker) does not replace a later result; another shard or job does', async () => {
    const table = await createResultsTable(clients.dynamodb);
    const sink = new DynamoDbUpsertSink({ client: clients.dynamodb, table, key });
    const shard = 'shardId-000000000000';
    // Commit 10 re-fired /home@0 with 4 views and its successor published it; the stalled
    // worker's commit 9 (3 views) and an earlier output of commit 10 arrive afterwards.
    const c9 = commitOutputs('job-o', shard, 9, 'counts', [windowResult('/home', 0, 3)]);
    const c10 = commitOutputs('job-o', shard, 10, 'counts', [
      windowResult('/home', 0, 2),
      windowResult('/home', 0, 4),
    ]);
    await sink.publish(c10);
    await sink.publish(c9);
    await sink.publish([c10[0]!]);
    expect(await scan(table)).toEqual([stored(windowResult('/home', 0, 4), c10[1]!)]);
    // Commit numbers compare as numbers (9 < 10 < 100), not as text.
    const c100 = commitOutputs('job-o', shard, 100, 'counts', [windowResult('/home', 0, 5)]);
    await sink.publish(c100);
    expect(await scan(table)).toEqual([stored(windowResult('/home', 0, 5), c100[0]!)]);

    // Without a depth (PublishContext), as versions before floeRank: another shard, or another
    // job generation, writes over it, whatever its commit numbers (ranks: the next test).
    const child = commitOutputs('job-o', 'shardId-000000000002', 1, 'counts', [windowResult('/home', 0, 6)]);
    await sink.publish(child);
    expect(await scan(table)).toEqual([stored(windowResult('/home', 0, 6), child[0]!)]);
    const replay = commitOutputs('job-o@1', 'shardId-000000000002', 1, 'counts', [
      windowResult('/home', 0, 7),
    ]);
    await sink.publish(replay);
    expect(await scan(table)).toEqual([stored(windowResult('/home', 0, 7), replay[0]!)]);

    // conditionalWrites: false is last writer wins (BatchWriteItem).
    const unordered = new DynamoDbUpsertSink({
      client: clients.dynamodb,
      table,
      key,
      conditionalWrites: false,
    });
    const old = commitOutputs('job-o@1', 'shardId-000000000002', 0, 'counts', [windowResult('/home', 0, 1)]);
    await unordered.publish(old);
    expect(await scan(table)).toEqual([{ ...windowResult('/home', 0, 1), floeOutputId: old[0]!.id }]);
  });

  it("orders a job's writes across generations and reshard lineage (floeRank), and against items and writers of versions without it", async () => {
    const table = await createResultsTable(clients.dynamodb);
    const sink = new DynamoDbUpsertSink({ client: clients.dynamodb, table, key });
    const home = (views: number) => windowResult('/home', 0, views);
    /** What a worker publishes: one output, with its shard's lineage depth. */
    const publish = async (id: string, views: number, depth: number) => {
      const output: Output = { id, sink: 'counts', value: home(views) };
      await sink.publish([output], { depth });
      return { ...stored(home(views), output), floeRank: outputRank(id, depth) };
    };
    const parent = 'shardId-000000000000';
    const child = 'shardId-000000000002';
    const sibling = 'shardId-000000000003';

    // A split child (depth 1) owns the key; its parent's worker, stalled past its lease, publishes
    // its last commit afterwards (a higher commit number than the child's): skipped.
    const fromChild = await publish(`job-r/${child}/1/0`, 6, 1);
    await publish(`job-r/${parent}/50/0`, 5, 0);
    expect(await scan(table)).toEqual([fromChild]);
    // The same shard's later commit still wins; its earlier commit, published late, does not.
    const later = await publish(`job-r/${child}/2/0`, 7, 1);
    await publish(`job-r/${child}/1/0`, 6, 1);
    expect(await scan(table)).toEqual([later]);
    // Another shard of the same depth (the sink key is not co-partitioned): written, as before.
    const fromSibling = await publish(`job-r/${sibling}/1/0`, 8, 1);
    expect(await scan(table)).toEqual([fromSibling]);
    // Through a RoutingSink, which passes the depth on: the parent is still skipped.
    await new RoutingSink({ counts: sink }).publish(
      [{ id: `job-r/${parent}/51/0`, sink: 'counts', value: home(1) }],
      { depth: 0 },
    );
    expect(await scan(table)).toEqual([fromSibling]);

    // A replay's new generation (job-r@9, at depth 0 again) wins; an older generation's worker
    // that stalled across the replay, even at a greater depth, is skipped (10 > 9 as numbers).
    const gen9 = await publish(`job-r@9/${parent}/1/0`, 9, 0);
    await publish(`job-r/${child}/3/0`, 2, 1);
    expect(await scan(table)).toEqual([gen9]);
    const gen10 = await publish(`job-r@10/${parent}/1/0`, 10, 0);
    await publish(`job-r@9/${child}/9/0`, 3, 5);
    expect(await scan(table)).toEqual([gen10]);

    // Another job id (a replay --as-job) writes over it, whatever its rank, and the other way round.
    const otherJob = await publish(`job-s/${parent}/1/0`, 11, 0);
    expect(await scan(table)).toEqual([otherJob]);
    const back = await publish(`job-r@10/${parent}/2/0`, 12, 0);
    expect(await scan(table)).toEqual([back]);

    // Versions before floeRank: `floeOrder` only, in the same format, conditioned on it alone.
    const oldVersionPut = (id: string, views: number) =>
      clients.dynamodb
        .send(
          new PutItemCommand({
            TableName: table,
            Item: {
              page: { S: '/home' },
              windowStart: { N: '0' },
              windowEnd: { N: '60000' },
              views: { N: String(views) },
              floeOutputId: { S: id },
              floeOrder: { S: outputOrder(id) },
            },
            ConditionExpression:
              'attribute_not_exists(#order) OR NOT begins_with(#order, :source) OR #order <= :order',
            ExpressionAttributeNames: { '#order': 'floeOrder' },
            ExpressionAttributeValues: {
              ':source': { S: outputOrder(id).slice(0, -33) },
              ':order': { S: outputOrder(id) },
            },
          }),
        )
        .then(
          () => true,
          (error: Error) => {
            if (error.name !== 'ConditionalCheckFailedException') throw error;
            return false;
          },
        );
    const oldItem = (id: string, views: number) =>
      stored(home(views), { id, sink: 'counts', value: home(views) });
    // An old writer of the same shard loses to a new item of a later commit.
    expect(await oldVersionPut(`job-r@10/${parent}/1/0`, 1)).toBe(false);
    expect(await scan(table)).toEqual([back]);
    // An old item is replaced by a new write, and ordered by floeOrder alone against the same
    // shard (a new worker's late publish of an earlier commit loses to it).
    expect(await oldVersionPut(`job-r@10/${parent}/5/0`, 13)).toBe(true);
    await publish(`job-r@10/${parent}/4/0`, 14, 0);
    expect(await scan(table)).toEqual([oldItem(`job-r@10/${parent}/5/0`, 13)]);
    const overOld = await publish(`job-r@10/${child}/1/0`, 15, 1);
    expect(await scan(table)).toEqual([overOld]);
    expect(await oldVersionPut(`job-r/${parent}/1/0`, 16)).toBe(true); // gen 0 old-format item
    const overOldGeneration = await publish(`job-r@10/${parent}/6/0`, 17, 0);
    expect(await scan(table)).toEqual([overOldGeneration]);
  });

  it('writes above 25 items in several batches and retries UnprocessedItems', async () => {
    const table = await createResultsTable(clients.dynamodb);
    const client = own(dynamoDbClient(env));
    const { calls } = instrumentDynamo(client, 2);
    const sink = new DynamoDbUpsertSink({
      client,
      table,
      key,
      retry: FAST_RETRY,
      concurrency: 1,
      conditionalWrites: false,
    });
    const values = Array.from({ length: 60 }, (_, i) => windowResult(`/p${i % 7}`, i * 60_000, i));
    const outputs = commitOutputs('job-d2', 'shardId-000000000003', 9, 'counts', values);
    await sink.publish(outputs);
    // 25 (13 unprocessed) -> 13 (7 unprocessed, 2nd injected) -> 7 -> 25 -> 10, in some interleaving.
    expect(Math.max(...calls)).toBeLessThanOrEqual(25);
    expect(calls.length).toBeGreaterThanOrEqual(5);
    const items = await scan(table);
    expect(items).toHaveLength(60);
    expect(new Set(items.map((i) => i.floeOutputId))).toEqual(new Set(outputs.map((o) => o.id)));

    await sink.publish(outputs);
    expect(await scan(table)).toEqual(items);
  });

  it('stores non-object values under `value` or valueAttribute; rejects bad keys and missing tables', async () => {
    const table = await createResultsTable(clients.dynamodb);
    const asValue = new DynamoDbUpsertSink({
      client: clients.dynamodb,
      table,
      key: (_v, o) => ({ page: o.sink, windowStart: Number(o.id.split('/').pop()) }),
    });
    await asValue.publish(commitOutputs('j', 's', 1, 'numbers', [42, 'text']));
    const nested = new DynamoDbUpsertSink({ client: clients.dynamodb, table, key, valueAttribute: 'result' });
    const v = { page: '/n', windowStart: 5, tags: ['a', 'b'], inner: { ok: true, none: null } };
    await nested.publish(commitOutputs('j', 's', 2, 'nested', [v]));
    const [n0, n1] = commitOutputs('j', 's', 1, 'numbers', [42, 'text']);
    expect(await scan(table)).toEqual([
      stored({ page: '/n', windowStart: 5, result: v }, { id: 'j/s/2/0', sink: 'nested', value: v }),
      stored({ page: 'numbers', windowStart: 0, value: 42 }, n0!),
      stored({ page: 'numbers', windowStart: 1, value: 'text' }, n1!),
    ]);

    const bad = commitOutputs('j', 's', 3, 'counts', [{ page: '', windowStart: 1 }]);
    await expect(asValue.publish(bad)).resolves.toBeUndefined(); // key from sink/id, fine
    await expect(nested.publish(bad)).rejects.toThrow(SinkOutputError);
    const wrongType = new DynamoDbUpsertSink({
      client: clients.dynamodb,
      table,
      key: (x) => ({
        page: (x as PageViewCount).page,
        windowStart: String((x as PageViewCount).windowStart),
      }),
    });
    await expect(
      wrongType.publish(commitOutputs('j', 's', 4, 'c', [windowResult('/x', 1, 1)])),
    ).rejects.toThrow(ConfigurationError);
    const missing = new DynamoDbUpsertSink({
      client: clients.dynamodb,
      table: uniqueName('no-such-table'),
      key,
    });
    await expect(
      missing.publish(commitOutputs('j', 's', 5, 'c', [windowResult('/x', 1, 1)])),
    ).rejects.toThrow(ConfigurationError);
  });

  it("rejects an output whose key is over DynamoDB's key size limits (hash 2048 bytes, range 1024), not as a ConfigurationError", async () => {
    // A long key (a page URL with its query string) made every publish of the shard fail with
    // ValidationException "Size of hashkey has exceeded ...", mapped to a ConfigurationError.
    const table = uniqueName('sink-long-keys');
    await clients.dynamodb.send(
      new CreateTableCommand({
        TableName: table,
        BillingMode: 'PAY_PER_REQUEST',
        AttributeDefinitions: [
          { AttributeName: 'page', AttributeType: 'S' },
          { AttributeName: 'user', AttributeType: 'S' },
        ],
        KeySchema: [
          { AttributeName: 'page', KeyType: 'HASH' },
          { AttributeName: 'user', KeyType: 'RANGE' },
        ],
      }),
    );
    await waitUntilTableExists({ client: clients.dynamodb, maxWaitTime: 60 }, { TableName: table });
    const sink = new DynamoDbUpsertSink({
      client: clients.dynamodb,
      table,
      key: (v) => ({ page: (v as { page: string }).page, user: (v as { user: string }).user }),
      retry: FAST_RETRY,
    });
    const outputs = commitOutputs('j', 's', 1, 'c', [
      { page: '/ok', user: 'u' },
      { page: `/${'p'.repeat(2048)}`, user: 'u' },
      { page: '/ok2', user: 'u'.repeat(1025) },
    ]);
    const error = await sink.publish(outputs).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SinkOutputError);
    expect([...(error as SinkOutputError).rejected.keys()]).toContain(outputs[1]!.id);
    // What the routing does with the error: publish the rest (DynamoDB finds the range key too
    // long, one output at a time).
    const deadLetters: Output[] = [];
    const routed = new RoutingSink({
      c: sink,
      'floe.dead-letter': { publish: async (o) => void deadLetters.push(...o) },
    });
    await routed.publish(outputs);
    const { Items = [] } = await clients.dynamodb.send(new ScanItemsCommand({ TableName: table }));
    expect(Items.map((i) => i.page?.S)).toEqual(['/ok']);
    expect(deadLetters.map((d) => d.id).sort()).toEqual([outputs[1]!.id, outputs[2]!.id]);
  });

  it("rejects, before sending, an output holding a number outside DynamoDB's range (not a ConfigurationError)", async () => {
    const table = await createResultsTable(clients.dynamodb);
    // A double can be far larger (or smaller) than a DynamoDB number: DynamoDB answers
    // ValidationException "Number overflow" (moto too), which failed the publish as a misconfiguration.
    for (const conditionalWrites of [true, false]) {
      const sink = new DynamoDbUpsertSink({ client: clients.dynamodb, table, key, conditionalWrites });
      for (const [i, extreme] of [2e126, -1e200, 1e-131].entries()) {
        const outputs = commitOutputs('j', 's', 1, 'c', [
          windowResult('/ok', i, 1),
          { ...windowResult('/x', i, 1), extreme },
        ]);
        const error = await sink.publish(outputs).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(SinkOutputError);
        expect([...(error as SinkOutputError).rejected.keys()]).toEqual([outputs[1]!.id]);
        expect((error as Error).message).toMatch(/outside DynamoDB's number range/);
      }
      // The largest and smallest magnitudes DynamoDB takes are written.
      await sink.publish(
        commitOutputs('j', 's', 2, 'c', [
          { ...windowResult('/edge', 0, 1), extreme: 9.99999999999999e125, tiny: 1e-130 },
        ]),
      );
    }
    // (The document client cannot read such numbers back: the low-level one.)
    const { Items = [] } = await clients.dynamodb.send(
      new ScanItemsCommand({ TableName: table, ConsistentRead: true }),
    );
    expect(Items.map((i) => [i.page?.S, i.extreme?.N, i.tiny?.N])).toEqual([
      ['/edge', '9.99999999999999e+125', '1e-130'],
    ]);
  });
});

describe('S3ObjectSink', () => {
  it('writes one NDJSON object per sink and commit; a republish rewrites nothing and changes nothing', async () => {
    const bucket = uniqueName('sink-s3');
    await createBucket(clients.s3, bucket);
    const client = own(s3Client(env));
    const seen = countPuts(client);
    const sink = new S3ObjectSink({ client, bucket, prefix: 'results/' });
    const outputs = [
      ...commitOutputs('job-s', 'shardId-000000000000', 3, 'counts', [{ a: 1 }, { a: 2 }]),
      ...commitOutputs('job-s', 'shardId-000000000000', 4, 'counts', [{ a: 3 }]),
      { id: 'job-s/shardId-000000000000/4/1', sink: 'floe.dead-letter', value: { reason: 'deserialize' } },
    ];
    await sink.publish(outputs);
    const first = await readObjects(clients.s3, bucket);
    expect(first).toEqual(
      new Map([
        [
          'results/counts/job-s/shardId-000000000000/000000000003.ndjson',
          '{"id":"job-s/shardId-000000000000/3/0","value":{"a":1}}\n{"id":"job-s/shardId-000000000000/3/1","value":{"a":2}}\n',
        ],
        [
          'results/counts/job-s/shardId-000000000000/000000000004.ndjson',
          '{"id":"job-s/shardId-000000000000/4/0","value":{"a":3}}\n',
        ],
        [
          'results/floe.dead-letter/job-s/shardId-000000000000/000000000004.ndjson',
          '{"id":"job-s/shardId-000000000000/4/1","value":{"reason":"deserialize"}}\n',
        ],
      ]),
    );
    expect(seen.puts).toHaveLength(3);
    expect(sink.keyOf(outputs[0]!)).toBe('results/counts/job-s/shardId-000000000000/000000000003.ndjson');

    seen.puts.length = 0;
    await sink.publish(outputs);
    expect(seen.puts).toHaveLength(0); // same content: nothing rewritten
    expect(await readObjects(clients.s3, bucket)).toEqual(first);

    // A partial republish (only part of commit 3, out of order) loses nothing.
    await sink.publish([outputs[1]!]);
    expect(await readObjects(clients.s3, bucket)).toEqual(first);

    // Without merge: one PUT per object and no GET; the same content again.
    const plain = new S3ObjectSink({ client, bucket, prefix: 'results/', merge: false });
    seen.puts.length = 0;
    seen.gets.length = 0;
    await plain.publish(outputs);
    expect(seen.puts).toHaveLength(3);
    expect(seen.gets).toHaveLength(0);
    expect(await readObjects(clients.s3, bucket)).toEqual(first);
  });

  it('rejects outputs without a job/shard/commit/index id and reports a missing bucket', async () => {
    const bucket = uniqueName('sink-s3-bad');
    await createBucket(clients.s3, bucket);
    const sink = new S3ObjectSink({ client: clients.s3, bucket });
    await expect(sink.publish([{ id: 'not-an-id', sink: 'x', value: 1 }])).rejects.toThrow(SinkOutputError);
    const missing = new S3ObjectSink({ client: clients.s3, bucket: uniqueName('no-such-bucket') });
    await expect(missing.publish(commitOutputs('j', 's', 1, 'x', [1]))).rejects.toThrow(ConfigurationError);
  });
});

describe('routing', () => {
  it('routes each sink to its destination from specs; a republish leaves the same contents', async () => {
    const table = await createResultsTable(clients.dynamodb);
    const stream = uniqueName('sink-route');
    await createStream(clients.kinesis, stream, 1);
    const bucket = uniqueName('sink-route');
    await createBucket(clients.s3, bucket);
    const routing = routingSinkFromSpecs(
      [
        `page-view-counts=dynamodb:${table}?key=page,windowStart`,
        `alerts=kinesis:${stream}?partitionKey=page`,
        `floe.dead-letter=s3:${bucket}/dead-letters`,
        `*=s3://${bucket}/other/`,
      ],
      { kinesis: clients.kinesis, dynamodb: clients.dynamodb, s3: clients.s3 },
      { requiredSinks: ['page-view-counts', 'alerts', 'floe.dead-letter', 'floe.late'] },
    );
    const job = 'job-route';
    const shard = 'shardId-000000000000';
    const outputs: Output[] = [
      { id: `${job}/${shard}/1/0`, sink: 'page-view-counts', value: windowResult('/home', 0, 3) },
      { id: `${job}/${shard}/1/1`, sink: 'alerts', value: { page: '/home', level: 'high' } },
      {
        id: `${job}/${shard}/1/2`,
        sink: 'floe.dead-letter',
        value: { reason: 'deserialize', shardId: shard },
      },
      { id: `${job}/${shard}/1/3`, sink: 'page-view-counts', value: windowResult('/home', 0, 5) },
      { id: `${job}/${shard}/1/4`, sink: 'floe.late', value: { page: '/old' } },
    ];
    await routing.publish(outputs);
    await routing.publish(outputs);

    expect(await scan(table)).toEqual([
      {
        ...windowResult('/home', 0, 5),
        floeOutputId: `${job}/${shard}/1/3`,
        floeOrder: outputOrder(`${job}/${shard}/1/3`),
      },
    ]);
    const records = await readStream(clients.kinesis, stream);
    expect(records).toHaveLength(2);
    expect(new Set(records.map((r) => r.id))).toEqual(new Set([`${job}/${shard}/1/1`]));
    expect(records[0]?.partitionKey).toBe('/home');
    expect([...(await readObjects(clients.s3, bucket)).keys()].sort()).toEqual([
      `dead-letters/floe.dead-letter/${job}/${shard}/000000000001.ndjson`,
      `other/floe.late/${job}/${shard}/000000000001.ndjson`,
    ]);
  });

  it('rejects an output to an unrouted sink before publishing anything', async () => {
    const stream = uniqueName('sink-unrouted');
    await createStream(clients.kinesis, stream, 1);
    const routing = new RoutingSink({ alerts: new KinesisStreamSink({ client: clients.kinesis, stream }) });
    const outputs = [
      ...commitOutputs('j', 's', 1, 'alerts', [1]),
      { id: 'j/s/1/1', sink: 'page-view-counts', value: 2 },
    ];
    await expect(routing.publish(outputs)).rejects.toThrow(
      /no destination is configured for outputs to sink "page-view-counts" \(configured: "alerts"\)/,
    );
    expect(await readStream(clients.kinesis, stream)).toHaveLength(0);
  });
});
