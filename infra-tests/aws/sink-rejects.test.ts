/**
 * A committed output that its sink can never take (a Kinesis record over 1 MiB, a DynamoDB item
 * without its key attribute) goes to the dead-letter output with reason `sink`, and the shard
 * moves on. Before, the publish failed with a SinkOutputError at every invocation (the output is
 * in the outbox, and each worker publishes the outbox first): the shard never read another record.
 * A real job (runJob over the Kinesis source, the DynamoDB + S3 backend and sinks bound from specs).
 */
import { waitUntilTableExists } from '@aws-sdk/client-dynamodb';
import { GetRecordsCommand, GetShardIteratorCommand, ListShardsCommand } from '@aws-sdk/client-kinesis';
import { ScanCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, expect, it } from 'vitest';
import { openAwsJob } from '../../lib/aws/job.ts';
import { putRecords } from '../../lib/aws/kinesis-source.ts';
import { createBucket, createTables } from '../../lib/aws/resources.ts';
import { compile, DEAD_LETTER_SINK, type DeadLetter, pipeline } from '../../lib/core/index.ts';
import { runJob } from '../../lib/runtime/local-runner.ts';
import { awsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { createTestStream, deleteTestStream } from '../env/kinesis-streams.ts';
import { readObjects } from './s3-objects.ts';
import { createUpsertTable } from './upsert-tables.ts';

const env = await setupAwsTestEnv();
const clients = awsClients(env);
const streams: string[] = [];
afterAll(async () => {
  await Promise.all(streams.map((s) => deleteTestStream(clients.kinesis, s)));
  clients.destroy();
});

interface Event {
  readonly n: number;
  readonly size: number;
  readonly page?: string;
}

it('an output its sink rejects is dead-lettered with reason "sink"; the shard goes on', async () => {
  const input = await createTestStream(clients.kinesis, 'rejects-in', 1);
  const output = await createTestStream(clients.kinesis, 'rejects-out', 1);
  streams.push(input, output);
  const stateTable = uniqueName('rejects-state');
  const controlTable = uniqueName('rejects-control');
  const bucket = uniqueName('rejects');
  const table = uniqueName('rejects-pages');
  await Promise.all([
    createTables(clients.dynamodb, stateTable, controlTable),
    createBucket(clients.s3, bucket),
    createUpsertTable(clients.dynamodb, table, 'page', 'n'),
  ]);
  await waitUntilTableExists({ client: clients.dynamodb, maxWaitTime: 60 }, { TableName: table });
  const p = pipeline('rejects');
  const events = p.source<Event>();
  events.map((e) => ({ n: e.n, blob: 'x'.repeat(e.size) })).sink('blobs');
  events.filter((e) => e.size < 100).sink('pages');
  const config = {
    job: 'rejects',
    stream: input,
    stateTable,
    controlTable,
    bucket,
    sinks: [
      `blobs=kinesis:${output}`,
      `pages=dynamodb:${table}?key=page,n`,
      // Without merge, each object is written whole: the rejected outputs must be in it too.
      `${DEAD_LETTER_SINK}=s3:${bucket}/dead-letters/?merge=false`,
    ],
  };
  const run = () =>
    runJob(openAwsJob(compile(p), config, clients), { untilIdle: true, roundPauseMs: 10, idlePollMs: 10 });
  const put = (e: Event) =>
    putRecords(clients.kinesis, input, [{ partitionKey: 'a', data: JSON.stringify(e) }]);

  await putRecords(clients.kinesis, input, [
    { partitionKey: 'a', data: 'not json' }, // a dead letter of the same commit
    { partitionKey: 'a', data: JSON.stringify({ n: 1, size: 1_100_000 }) }, // over Kinesis's 1 MiB per record
    { partitionKey: 'a', data: JSON.stringify({ n: 2, size: 10 }) }, // no "page": no DynamoDB key
  ]);
  await run();
  await put({ n: 3, size: 10, page: '/home' });
  await run();

  const records = await readKinesis(output);
  expect(records.map((r) => r.value.n)).toEqual([2, 3]);
  const items = (await clients.ddb.send(new ScanCommand({ TableName: table, ConsistentRead: true }))).Items;
  expect(items?.map((i) => i.page)).toEqual(['/home']);
  const deadLetters = [...(await readObjects(clients.s3, bucket, 'dead-letters/')).values()]
    .flatMap((text) => text.trim().split('\n'))
    .map((line) => JSON.parse(line) as { value: DeadLetter & { value?: Event } });
  expect(deadLetters.map((d) => [d.value.reason, d.value.sink, d.value.value?.n])).toEqual([
    ['deserialize', undefined, undefined],
    ['sink', 'blobs', 1],
    ['sink', 'pages', 2],
  ]);
  expect(deadLetters[1]?.value.message).toMatch(/1048576 bytes/);
  expect(deadLetters[2]?.value.message).toMatch(/field "page" to be a string or number; received undefined/);
});

/** The records of a one-shard stream (few: one GetRecords). */
async function readKinesis(stream: string): Promise<{ id: string; value: { n: number } }[]> {
  const { Shards = [] } = await clients.kinesis.send(new ListShardsCommand({ StreamName: stream }));
  const { ShardIterator } = await clients.kinesis.send(
    new GetShardIteratorCommand({
      StreamName: stream,
      ShardId: Shards[0]?.ShardId,
      ShardIteratorType: 'TRIM_HORIZON',
    }),
  );
  const out = await clients.kinesis.send(new GetRecordsCommand({ ShardIterator }));
  return (out.Records ?? []).map((r) => JSON.parse(Buffer.from(r.Data ?? []).toString('utf8')));
}
