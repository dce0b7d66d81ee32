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
import { parseSinkBindings } from './sinks-config.ts';

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

/**
 * Whether a DynamoDB table exists (DescribeTable, unretried beyond the client's own retries).
 * Only "not found" means false: any other error (credentials, endpoint, throttling) is thrown.
 */
export async function tableExists(dynamodb: DynamoDBClient, table: string): Promise<boolean> {
  try {
    await dynamodb.send(new DescribeTableCommand({ TableName: table }));
    return true;
  } catch (error) {
    // By name, not instanceof: an SDK error from another copy of the client is the same error.
    if ((error as { name?: string } | undefined)?.name === 'ResourceNotFoundException') return false;
    throw error;
  }
}

/**
 * Whether an S3 bucket exists (HeadBucket). Only a 404 means false (HeadBucket has no body, so
 * the status is all there is); a 403 (another account's bucket, or no permission) and any
 * other error are thrown.
 */
export async function bucketExists(s3: S3Client, bucket: string): Promise<boolean> {
  try {
    await s3.send(new HeadBucketCommand({ Bucket: bucket }));
    return true;
  } catch (error) {
    const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (status === 404) return false;
    throw error;
  }
}

/** The error for missing resources: `missing` (described, e.g. `DynamoDB table "t"`), the region, and what to do. */
export function missingResourcesError(
  missing: readonly string[],
  region: string,
  hint: string,
): ConfigurationError {
  return new ConfigurationError(`missing ${missing.join(', ')} in region ${region}; ${hint}`);
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
    const exists = describedTables.get(table) ?? (await tableExists(clients.dynamodb, table));
    if (!exists) missing.push(`DynamoDB table "${table}"`);
  }
  if (!(await bucketExists(clients.s3, resources.bucket))) missing.push(`S3 bucket "${resources.bucket}"`);
  if (missing.length > 0) {
    throw missingResourcesError(missing, await clients.kinesis.config.region(), hint);
  }
}

/**
 * Checks the destinations of `--sink` bindings before a job runs: each DynamoDB table, Kinesis
 * stream and S3 bucket exists, and a table's key is the one its binding's `?key=` names (the
 * sink writes each output under those attributes: with others, every output would be rejected
 * and dead-lettered, or every write fail). Throws one ConfigurationError naming every problem.
 */
export async function checkSinkDestinations(
  clients: { kinesis: KinesisClient; dynamodb: DynamoDBClient; s3: S3Client },
  specs: readonly string[],
): Promise<void> {
  if (specs.length === 0) return;
  const problems: string[] = [];
  const missing: string[] = [];
  for (const binding of parseSinkBindings(specs)) {
    const of = `(sink ${binding.sink})`;
    if (binding.type === 'dynamodb') {
      let keySchema: readonly { AttributeName?: string; KeyType?: string }[];
      try {
        const described = await clients.dynamodb.send(new DescribeTableCommand({ TableName: binding.table }));
        keySchema = described.Table?.KeySchema ?? [];
      } catch (error) {
        if (!(error instanceof ResourceNotFoundException)) throw error;
        missing.push(`DynamoDB table "${binding.table}" ${of}`);
        continue;
      }
      const hash = keySchema.find((k) => k.KeyType === 'HASH')?.AttributeName;
      const range = keySchema.find((k) => k.KeyType === 'RANGE')?.AttributeName;
      const tableKey = [hash, range].filter((k): k is string => k !== undefined);
      // The order of ?key= does not matter: the fields become the item's attributes.
      if ([...tableKey].sort().join(',') !== [...binding.key].sort().join(',')) {
        problems.push(
          `--sink ${JSON.stringify(binding.spec)}: table "${binding.table}" has the key ${tableKey.map((k, i) => `${k} (${i === 0 ? 'partition' : 'sort'} key)`).join(', ')}, but the binding names ?key=${binding.key.join(',')}; pass ?key=${tableKey.join(',')} (fields of the sink's values)`,
        );
      }
    } else if (binding.type === 'kinesis') {
      try {
        await clients.kinesis.send(
          new DescribeStreamSummaryCommand(
            binding.stream.startsWith('arn:')
              ? { StreamARN: binding.stream }
              : { StreamName: binding.stream },
          ),
        );
      } catch (error) {
        if (!(error instanceof KinesisResourceNotFound)) throw error;
        missing.push(`Kinesis stream "${binding.stream}" ${of}`);
      }
    } else if (!(await bucketExists(clients.s3, binding.bucket))) {
      missing.push(`S3 bucket "${binding.bucket}" ${of}`);
    }
  }
  if (missing.length > 0) {
    const region = await clients.kinesis.config.region();
    problems.unshift(
      `missing sink destination ${missing.join(', ')} in region ${region}: create ${missing.length === 1 ? 'it' : 'them'}, or fix the --sink binding${missing.length === 1 ? '' : 's'}`,
    );
  }
  if (problems.length > 0) throw new ConfigurationError(problems.join('; '));
}
