// Kinesis streams for infra tests: create one with a unique name, wait until it is ACTIVE, read
// back every record, delete it.
import {
  CreateStreamCommand,
  DeleteStreamCommand,
  DescribeStreamSummaryCommand,
  GetRecordsCommand,
  GetShardIteratorCommand,
  type KinesisClient,
  ListShardsCommand,
} from '@aws-sdk/client-kinesis';
import { uniqueName } from './aws-clients.ts';
import { eventually } from './eventually.ts';

/** Resolves when the stream is ACTIVE (after creation or a reshard). */
export async function waitStreamActive(kinesis: KinesisClient, stream: string): Promise<void> {
  await eventually(`stream ${stream} ACTIVE`, async () => {
    const out = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream }));
    return out.StreamDescriptionSummary?.StreamStatus === 'ACTIVE' ? true : undefined;
  });
}

/** Creates a stream with a unique name and `shards` shards; resolves when it is ACTIVE. */
export async function createTestStream(
  kinesis: KinesisClient,
  prefix: string,
  shards: number,
): Promise<string> {
  const stream = uniqueName(prefix);
  await kinesis.send(new CreateStreamCommand({ StreamName: stream, ShardCount: shards }));
  await waitStreamActive(kinesis, stream);
  return stream;
}

/** Deletes a stream (consumers included); errors are ignored. */
export async function deleteTestStream(kinesis: KinesisClient, stream: string): Promise<void> {
  await kinesis
    .send(new DeleteStreamCommand({ StreamName: stream, EnforceConsumerDeletion: true }))
    .catch(() => {});
}

/** A record read back from a stream: its partition key and its data as UTF-8 text. */
export interface StreamRecord {
  readonly partitionKey: string;
  readonly data: string;
}

/**
 * Every record of the stream, shard by shard (in ListShards order), each shard in order: read
 * from TRIM_HORIZON until a read returns nothing and is caught up, or the shard has ended.
 */
export async function readStreamRecords(kinesis: KinesisClient, stream: string): Promise<StreamRecord[]> {
  const { Shards = [] } = await kinesis.send(new ListShardsCommand({ StreamName: stream }));
  const records: StreamRecord[] = [];
  for (const shard of Shards) {
    const { ShardIterator } = await kinesis.send(
      new GetShardIteratorCommand({
        StreamName: stream,
        ShardId: shard.ShardId,
        ShardIteratorType: 'TRIM_HORIZON',
      }),
    );
    let iterator = ShardIterator;
    while (iterator) {
      const out = await kinesis.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 10_000 }));
      for (const r of out.Records ?? []) {
        records.push({
          partitionKey: r.PartitionKey ?? '',
          data: Buffer.from(r.Data ?? []).toString('utf8'),
        });
      }
      if ((out.Records ?? []).length === 0 && (out.MillisBehindLatest ?? 0) === 0) break;
      iterator = out.NextShardIterator;
    }
  }
  return records;
}
