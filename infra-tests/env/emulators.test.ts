/**
 * Smoke test of the infra-tests environment: the features the floe adapters rely on work on whatever
 * backend the global setup chose (local emulators here; LocalStack or AWS elsewhere).
 */
import { CreateTableCommand, DescribeTableCommand } from '@aws-sdk/client-dynamodb';
import {
  GetRecordsCommand,
  type GetRecordsCommandOutput,
  GetShardIteratorCommand,
  type KinesisClient,
  ListShardsCommand,
  MergeShardsCommand,
  PutRecordCommand,
  PutRecordsCommand,
  type Shard,
  SplitShardCommand,
} from '@aws-sdk/client-kinesis';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { GetCommand, TransactWriteCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, describe, expect, it } from 'vitest';
import { type AwsClients, awsClients, setupAwsTestEnv, uniqueName } from './aws-clients.ts';
import { eventually } from './eventually.ts';
import { createTestStream, waitStreamActive } from './kinesis-streams.ts';

const env = await setupAwsTestEnv();
const clients: AwsClients = awsClients(env);
afterAll(() => clients.destroy());

async function listShards(kinesis: KinesisClient, name: string): Promise<Shard[]> {
  const shards: Shard[] = [];
  let token: string | undefined;
  do {
    const out = await kinesis.send(
      token ? new ListShardsCommand({ NextToken: token }) : new ListShardsCommand({ StreamName: name }),
    );
    shards.push(...(out.Shards ?? []));
    token = out.NextToken;
  } while (token);
  return shards;
}

/** Reads a shard from TRIM_HORIZON until caught up (open shard) or its end (closed shard). */
async function readShard(kinesis: KinesisClient, stream: string, shardId: string) {
  const { ShardIterator } = await kinesis.send(
    new GetShardIteratorCommand({ StreamName: stream, ShardId: shardId, ShardIteratorType: 'TRIM_HORIZON' }),
  );
  let iterator = ShardIterator;
  const records: { data: string; partitionKey: string; sequenceNumber: string }[] = [];
  let last: GetRecordsCommandOutput | undefined;
  while (iterator) {
    last = await kinesis.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 1000 }));
    for (const r of last.Records ?? []) {
      records.push({
        data: Buffer.from(r.Data ?? []).toString('utf8'),
        partitionKey: r.PartitionKey ?? '',
        sequenceNumber: r.SequenceNumber ?? '',
      });
    }
    iterator = last.NextShardIterator;
    if ((last.Records ?? []).length === 0 && last.MillisBehindLatest === 0) break;
  }
  return { records, last, ended: iterator === undefined };
}

describe(`AWS test environment (${env.kind})`, () => {
  it('provides endpoints for the three services', () => {
    expect(env.region).toBeTruthy();
    if (env.kind !== 'env') {
      expect(env.endpoints.kinesis).toMatch(/^http:\/\//);
      expect(env.endpoints.dynamodb).toMatch(/^http:\/\//);
      expect(env.endpoints.s3).toMatch(/^http:\/\//);
    }
  });

  describe('Kinesis', () => {
    it('creates a 2-shard stream, puts records and reads them back per shard', async () => {
      const { kinesis } = clients;
      const stream = await createTestStream(kinesis, 'smoke', 2);

      const shards = await listShards(kinesis, stream);
      expect(shards).toHaveLength(2);

      const entries = Array.from({ length: 40 }, (_, i) => ({
        Data: Buffer.from(JSON.stringify({ i })),
        PartitionKey: `key-${i}`,
      }));
      const put = await kinesis.send(new PutRecordsCommand({ StreamName: stream, Records: entries }));
      expect(put.FailedRecordCount ?? 0).toBe(0);
      const putShards = new Set(put.Records?.map((r) => r.ShardId));
      expect(putShards.size).toBe(2); // 40 keys spread over both shards

      const all: { data: string; partitionKey: string; sequenceNumber: string; shardId: string }[] = [];
      for (const shard of shards) {
        const { records } = await readShard(kinesis, stream, shard.ShardId!);
        // per shard, records come back in put order with increasing sequence numbers
        const expected = put.Records!.flatMap((r, i) =>
          r.ShardId === shard.ShardId ? [{ seq: r.SequenceNumber!, key: `key-${i}` }] : [],
        );
        expect(records.map((r) => r.sequenceNumber)).toEqual(expected.map((e) => e.seq));
        expect(records.map((r) => r.partitionKey)).toEqual(expected.map((e) => e.key));
        all.push(...records.map((r) => ({ ...r, shardId: shard.ShardId! })));
      }
      expect(all).toHaveLength(40);
      expect(new Set(all.map((r) => JSON.parse(r.data).i))).toEqual(new Set(entries.map((_, i) => i)));

      // resume after a sequence number, as a worker does from its checkpoint
      const first = put.Records![0]!;
      const { ShardIterator } = await kinesis.send(
        new GetShardIteratorCommand({
          StreamName: stream,
          ShardId: first.ShardId!,
          ShardIteratorType: 'AFTER_SEQUENCE_NUMBER',
          StartingSequenceNumber: first.SequenceNumber!,
        }),
      );
      const after = await kinesis.send(new GetRecordsCommand({ ShardIterator }));
      const sameShard = put.Records!.filter((r) => r.ShardId === first.ShardId);
      expect(after.Records?.[0]?.SequenceNumber).toBe(sameShard[1]?.SequenceNumber);
    });

    it.skipIf(env.endpoints.kinesis === undefined)(
      'splits and merges shards with parent/child lineage (kinesis-mock)',
      async () => {
        const { kinesis } = clients;
        const stream = await createTestStream(kinesis, 'reshard', 2);
        const [s0, s1] = (await listShards(kinesis, stream)) as [Shard, Shard];
        await kinesis.send(
          new PutRecordCommand({ StreamName: stream, Data: Buffer.from('before'), PartitionKey: 'p' }),
        );

        // split shard 0 at the middle of its hash key range
        const lo = BigInt(s0.HashKeyRange!.StartingHashKey!);
        const hi = BigInt(s0.HashKeyRange!.EndingHashKey!);
        const mid = (lo + hi) / 2n;
        await kinesis.send(
          new SplitShardCommand({
            StreamName: stream,
            ShardToSplit: s0.ShardId!,
            NewStartingHashKey: mid.toString(),
          }),
        );
        await waitStreamActive(kinesis, stream);
        const afterSplit = await listShards(kinesis, stream);
        expect(afterSplit).toHaveLength(4);
        const parent = afterSplit.find((s) => s.ShardId === s0.ShardId)!;
        expect(parent.SequenceNumberRange?.EndingSequenceNumber).toBeDefined(); // closed
        const children = afterSplit.filter((s) => s.ParentShardId === s0.ShardId);
        expect(children).toHaveLength(2);
        children.sort((a, b) =>
          BigInt(a.HashKeyRange!.StartingHashKey!) < BigInt(b.HashKeyRange!.StartingHashKey!) ? -1 : 1,
        );
        const [c1, c2] = children as [Shard, Shard];
        expect(c1.HashKeyRange).toEqual({
          StartingHashKey: lo.toString(),
          EndingHashKey: (mid - 1n).toString(),
        });
        expect(c2.HashKeyRange).toEqual({ StartingHashKey: mid.toString(), EndingHashKey: hi.toString() });

        // a closed parent reads to its end: no next iterator, and the response names the children
        const parentRead = await readShard(kinesis, stream, s0.ShardId!);
        expect(parentRead.ended).toBe(true);
        expect(parentRead.last?.ChildShards?.map((c) => c.ShardId).sort()).toEqual(
          [c1.ShardId, c2.ShardId].sort(),
        );

        // merge the two children back
        await kinesis.send(
          new MergeShardsCommand({
            StreamName: stream,
            ShardToMerge: c1.ShardId!,
            AdjacentShardToMerge: c2.ShardId!,
          }),
        );
        await waitStreamActive(kinesis, stream);
        const afterMerge = await listShards(kinesis, stream);
        expect(afterMerge).toHaveLength(5);
        const merged = afterMerge.find((s) => s.ParentShardId === c1.ShardId)!;
        expect(merged.AdjacentParentShardId).toBe(c2.ShardId);
        expect(merged.HashKeyRange).toEqual(s0.HashKeyRange);
        const open = afterMerge.filter((s) => s.SequenceNumberRange?.EndingSequenceNumber === undefined);
        expect(open.map((s) => s.ShardId).sort()).toEqual([merged.ShardId, s1.ShardId].sort());

        // new records for the old shard-0 range land in the merged shard
        const put = await kinesis.send(
          new PutRecordCommand({
            StreamName: stream,
            Data: Buffer.from('after'),
            PartitionKey: 'p',
            ExplicitHashKey: lo.toString(),
          }),
        );
        expect(put.ShardId).toBe(merged.ShardId);
      },
    );
  });

  describe('DynamoDB', () => {
    it('runs TransactWriteItems with a fencing condition, atomically', async () => {
      const { dynamodb, ddb } = clients;
      const table = uniqueName('smoke');
      await dynamodb.send(
        new CreateTableCommand({
          TableName: table,
          BillingMode: 'PAY_PER_REQUEST',
          AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
          KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
        }),
      );
      await eventually(`table ${table} ACTIVE`, async () => {
        const { Table } = await dynamodb.send(new DescribeTableCommand({ TableName: table }));
        return Table?.TableStatus === 'ACTIVE' ? true : undefined;
      });

      // acquire: the lease must not exist yet
      await ddb.send(
        new TransactWriteCommand({
          TransactItems: [
            {
              Put: {
                TableName: table,
                Item: { pk: 'lease#shard-0', fence: 1, committed: 0 },
                ConditionExpression: 'attribute_not_exists(pk)',
              },
            },
            { Put: { TableName: table, Item: { pk: 'state#a', count: 1 } } },
          ],
        }),
      );

      // a zombie holding fence 0 commits: the whole transaction is cancelled
      const commit = (fence: number, count: number) =>
        ddb.send(
          new TransactWriteCommand({
            TransactItems: [
              {
                Update: {
                  TableName: table,
                  Key: { pk: 'lease#shard-0' },
                  UpdateExpression: 'SET committed = committed + :one',
                  ConditionExpression: 'fence = :fence',
                  ExpressionAttributeValues: { ':fence': fence, ':one': 1 },
                },
              },
              { Put: { TableName: table, Item: { pk: 'state#a', count } } },
            ],
          }),
        );
      const error = await commit(0, 99).then(
        () => undefined,
        (e: unknown) => e as Error & { CancellationReasons?: { Code?: string }[] },
      );
      expect(error?.name).toBe('TransactionCanceledException');
      expect(error?.CancellationReasons?.map((r) => r.Code)).toEqual(['ConditionalCheckFailed', 'None']);
      const state = await ddb.send(new GetCommand({ TableName: table, Key: { pk: 'state#a' } }));
      expect(state.Item).toEqual({ pk: 'state#a', count: 1 });

      // the lease holder commits
      await commit(1, 2);
      const [lease, state2] = await Promise.all([
        ddb.send(new GetCommand({ TableName: table, Key: { pk: 'lease#shard-0' }, ConsistentRead: true })),
        ddb.send(new GetCommand({ TableName: table, Key: { pk: 'state#a' }, ConsistentRead: true })),
      ]);
      expect(lease.Item).toEqual({ pk: 'lease#shard-0', fence: 1, committed: 1 });
      expect(state2.Item).toEqual({ pk: 'state#a', count: 2 });
    });
  });

  describe('S3', () => {
    it('creates an object only if absent (PutObject IfNoneMatch "*")', async () => {
      const { s3 } = clients;
      const bucket = uniqueName('smoke');
      await s3.send(new CreateBucketCommand({ Bucket: bucket }));
      const key = 'deltas/job/shard-0/00000001.json';
      const first = await s3.send(
        new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'first', IfNoneMatch: '*' }),
      );
      expect(first.ETag).toBeTruthy();

      const second = await s3
        .send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'second', IfNoneMatch: '*' }))
        .then(
          () => undefined,
          (e: unknown) => e as Error & { $metadata?: { httpStatusCode?: number } },
        );
      expect(second?.$metadata?.httpStatusCode).toBe(412);
      expect(second?.name).toBe('PreconditionFailed');

      const body = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      expect(await body.Body?.transformToString()).toBe('first');
    });
  });
});
