/** Creating and checking the AWS resources a job needs (for emulators and `floe run --create`). */
import {
  CreateTableCommand,
  DescribeTableCommand,
  type DynamoDBClient,
  ResourceInUseException,
  ResourceNotFoundException,
  waitUntilTableExists,
} from '@aws-sdk/client-dynamodb';
import {
  CreateStreamCommand,
  DescribeStreamSummaryCommand,
  type KinesisClient,
  ResourceInUseException as KinesisResourceInUse,
  ResourceNotFoundException as KinesisResourceNotFound,
} from '@aws-sdk/client-kinesis';
import { CreateBucketCommand, HeadBucketCommand, type S3Client } from '@aws-sdk/client-s3';
import { ConfigurationError } from '../core/index.ts';

export interface JobResources {
  readonly stream: string;
  readonly stateTable: string;
  readonly controlTable: string;
  readonly bucket: string;
}

export async function createTables(
  dynamodb: DynamoDBClient,
  stateTable: string,
  controlTable: string,
): Promise<void> {
  const create = async (TableName: string, composite: boolean): Promise<void> => {
    try {
      await dynamodb.send(
        new CreateTableCommand({
          TableName,
          BillingMode: 'PAY_PER_REQUEST',
          AttributeDefinitions: [
            { AttributeName: 'pk', AttributeType: 'S' },
            ...(composite ? [{ AttributeName: 'sk', AttributeType: 'S' as const }] : []),
          ],
          KeySchema: [
            { AttributeName: 'pk', KeyType: 'HASH' },
            ...(composite ? [{ AttributeName: 'sk', KeyType: 'RANGE' as const }] : []),
          ],
        }),
      );
    } catch (error) {
      if (!(error instanceof ResourceInUseException)) throw error;
    }
    await waitUntilTableExists({ client: dynamodb, maxWaitTime: 60 }, { TableName });
  };
  await create(stateTable, false);
  await create(controlTable, true);
}

export async function createBucket(s3: S3Client, bucket: string): Promise<void> {
  try {
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (error) {
    const name = (error as { name?: string }).name;
    if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw error;
  }
}

export async function createStream(
  kinesis: KinesisClient,
  stream: string,
  shardCount: number,
): Promise<void> {
  try {
    await kinesis.send(new CreateStreamCommand({ StreamName: stream, ShardCount: shardCount }));
  } catch (error) {
    if (!(error instanceof KinesisResourceInUse)) throw error;
  }
  for (let i = 0; i < 120; i++) {
    const res = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream }));
    if (res.StreamDescriptionSummary?.StreamStatus === 'ACTIVE') return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new ConfigurationError(`stream ${stream} did not become ACTIVE within 30 s`);
}

/** What to do about missing resources, for `floe run`. */
const RUN_MISSING_RESOURCES_HINT =
  'check AWS_REGION, deploy the stack (cdk deploy), or for an emulator pass --create-resources';

/**
 * Checks that every resource exists; throws one ConfigurationError naming what is missing, in
 * which region, and `hint` (what to do about it). `describedTables`: tables the caller has just
 * described (true: it exists), which are not described again.
 */
export async function checkResources(
  clients: { kinesis: KinesisClient; dynamodb: DynamoDBClient; s3: S3Client },
  resources: JobResources,
  hint: string = RUN_MISSING_RESOURCES_HINT,
  describedTables: ReadonlyMap<string, boolean> = new Map(),
): Promise<void> {
  const missing: string[] = [];
  try {
    await clients.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: resources.stream }));
  } catch (error) {
    if (error instanceof KinesisResourceNotFound) missing.push(`Kinesis stream "${resources.stream}"`);
    else throw error;
  }
  for (const table of [resources.stateTable, resources.controlTable]) {
    const exists = describedTables.get(table);
    if (exists !== undefined) {
      if (!exists) missing.push(`DynamoDB table "${table}"`);
      continue;
    }
    try {
      await clients.dynamodb.send(new DescribeTableCommand({ TableName: table }));
    } catch (error) {
      if (error instanceof ResourceNotFoundException) missing.push(`DynamoDB table "${table}"`);
      else throw error;
    }
  }
  try {
    await clients.s3.send(new HeadBucketCommand({ Bucket: resources.bucket }));
  } catch (error) {
    const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (status === 404) missing.push(`S3 bucket "${resources.bucket}"`);
    else throw error;
  }
  if (missing.length > 0) {
    const region = await clients.kinesis.config.region();
    throw new ConfigurationError(`missing ${missing.join(', ')} in region ${region}; ${hint}`);
  }
}
