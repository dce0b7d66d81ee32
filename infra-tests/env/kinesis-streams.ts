// Kinesis streams for infra tests: create one with a unique name, wait until it is ACTIVE, delete it.
import {
  CreateStreamCommand,
  DeleteStreamCommand,
  DescribeStreamSummaryCommand,
  type KinesisClient,
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
