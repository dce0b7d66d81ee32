/**
 * Savepoints on AWS: state and checkpoints in DynamoDB (+ S3 for large checkpoints), the
 * Kinesis stream as the source, job records in the control table, savepoint files in S3
 * (`s3://<bucket>/savepoints/` by default).
 */
import {
  ConfigurationError,
  compareSequenceNumbers,
  errorMessage,
  type SnapshotStore,
  trimmedReason,
} from '../core/index.ts';
import {
  type ResumePoint,
  type SavepointBackend,
  type StateScope,
  supersededRestore,
} from '../runtime/savepoints.ts';
import { DynamoBackend } from './dynamodb-backend.ts';
import { type AwsClientsBundle, awsClients, defaultResourceNames } from './job.ts';
import { DynamoJobStore, restoreMarker } from './job-store.ts';
import { KinesisSource } from './kinesis-source.ts';
import { bucketExists, missingResourcesError, tableExists } from './resources.ts';
import { parseS3Url, S3SnapshotStore } from './snapshot-s3.ts';

export interface AwsSavepointOptions {
  readonly clients: Pick<AwsClientsBundle, 'kinesis' | 'dynamodb' | 's3'>;
  readonly stateTable: string;
  readonly controlTable: string;
  /** The bucket of deltas and large checkpoints. */
  readonly bucket: string;
  /** Where savepoints are. @default s3://<bucket>/savepoints/ */
  readonly savepoints?: SnapshotStore;
}

export function dynamoStateScope(options: AwsSavepointOptions, job: string, generation: number): StateScope {
  const backend = new DynamoBackend({
    dynamodb: options.clients.dynamodb,
    s3: options.clients.s3,
    stateTable: options.stateTable,
    controlTable: options.controlTable,
    bucket: options.bucket,
    job,
    generation,
  });
  return {
    backend,
    entries: () => backend.entries(),
    countEntries: async () => undefined,
    // Fenced per item (never over an item a commit wrote), so the guard is not needed here.
    importEntries: (entries) => backend.importEntries(entries),
    // Written with a check of the job record's restore marker, as the outbox items are.
    async importCheckpoint(checkpoint, guard) {
      const written = await backend.importCheckpoint(checkpoint, {
        job: guard.job,
        marker: restoreMarker(guard),
      });
      if (!written) throw supersededRestore(guard);
    },
    // Each outbox item is written with a check of the job record's restore marker.
    async importOutputs(shardId, outputs, guard) {
      const written = await backend.importOutputs(shardId, outputs, {
        job: guard.job,
        marker: restoreMarker(guard),
      });
      if (!written) throw supersededRestore(guard);
    },
    // Every commit writes a checkpoint with its state, so a scope without checkpoints is empty.
    isEmpty: async () => (await backend.listCheckpoints()).length === 0,
    discard: () => backend.dropScope(),
  };
}

export function awsSavepointBackend(options: AwsSavepointOptions): SavepointBackend {
  const source = (stream: string) => new KinesisSource({ client: options.clients.kinesis, stream });
  return {
    kind: 'aws',
    jobs: new DynamoJobStore(options.clients.dynamodb, options.controlTable),
    snapshots: options.savepoints ?? new S3SnapshotStore(options.clients.s3, options.bucket),
    scope: (job, generation) => dynamoStateScope(options, job, generation),
    source,
    checkResumable: (stream, shard) => kinesisResumable(source(stream), shard),
  };
}

/**
 * Compares the savepoint position with the oldest record Kinesis still holds for the shard
 * (TRIM_HORIZON). Kinesis sequence numbers are not dense, so when the saved position itself
 * was trimmed, the records after it are known to be intact only if the savepoint recorded the
 * next record and that one is still there; otherwise the replay is refused.
 */
async function kinesisResumable(source: KinesisSource, shard: ResumePoint): Promise<string | undefined> {
  if (shard.finished) return undefined;
  let listed: boolean;
  try {
    listed = (await source.listShards()).some((s) => s.shardId === shard.shardId);
  } catch (error) {
    return `the stream cannot be read (${errorMessage(error)})`;
  }
  let oldest: string | undefined;
  if (listed && shard.position !== undefined) {
    const reader = await source.openReader(shard.shardId, { type: 'TRIM_HORIZON' });
    try {
      for (let attempt = 0; attempt < 10; attempt++) {
        const read = await reader.read(1);
        oldest = read.records[0]?.sequenceNumber;
        if (oldest !== undefined || read.millisBehindLatest === 0 || read.shardEnded) break;
      }
    } finally {
      await reader.close?.();
    }
  }
  return trimmedReason(shard, { listed, oldest }, compareSequenceNumbers);
}

interface AwsValues {
  readonly 'savepoint-dir'?: string | undefined;
  readonly 'state-table'?: string | undefined;
  readonly 'control-table'?: string | undefined;
  readonly bucket?: string | undefined;
}

/** For the CLI: resources from flags, defaulting to the names `floe run --backend aws` uses for `job`. */
export async function openAwsSavepointBackend(values: AwsValues, job: string | undefined) {
  const defaults = job === undefined ? undefined : defaultResourceNames(job);
  const stateTable = values['state-table'] ?? defaults?.stateTable;
  const controlTable = values['control-table'] ?? defaults?.controlTable;
  const bucket = values.bucket ?? defaults?.bucket;
  if (stateTable === undefined || controlTable === undefined || bucket === undefined) {
    throw new ConfigurationError(
      'on the aws backend, pass --job <id> (its default resources: floe-<job>-state, floe-<job>-control, bucket floe-<job>) or --state-table, --control-table and --bucket',
    );
  }
  const clients = awsClients();
  const savepointDir = values['savepoint-dir'];
  const savepointBucket = savepointDir === undefined ? bucket : parseS3Url(savepointDir).bucket;
  const savepoints =
    savepointDir === undefined
      ? new S3SnapshotStore(clients.s3, bucket)
      : (() => {
          const { bucket: b, prefix } = parseS3Url(savepointDir);
          return new S3SnapshotStore(clients.s3, b, prefix);
        })();
  const runArgs = [
    '--backend',
    'aws',
    '--state-table',
    stateTable,
    '--control-table',
    controlTable,
    '--bucket',
    bucket,
  ];
  return {
    kind: 'aws' as const,
    /**
     * Checks, before the command starts, that the resources it uses exist: the savepoints'
     * bucket, and with `needs: 'job'` the job's tables and bucket too. One unretried request
     * each, so a missing region or credentials, or an unreachable endpoint, fail at once with
     * the SDK's error (the CLI explains it); missing resources give one ConfigurationError
     * naming them all.
     */
    async preflight(needs: 'savepoints' | 'job'): Promise<void> {
      const missing: string[] = [];
      if (needs === 'job') {
        for (const table of [stateTable, controlTable]) {
          if (!(await tableExists(clients.dynamodb, table))) missing.push(`DynamoDB table "${table}"`);
        }
      }
      for (const b of needs === 'job' ? [...new Set([bucket, savepointBucket])] : [savepointBucket]) {
        if (!(await bucketExists(clients.s3, b))) missing.push(`S3 bucket "${b}"`);
      }
      if (missing.length > 0) {
        throw missingResourcesError(
          missing,
          await clients.dynamodb.config.region(),
          "pass the job's resources with --state-table, --control-table and --bucket (a StreamProcessor stack's outputs name them; the defaults are those of --job <id>: floe-<job>-state, floe-<job>-control, bucket floe-<job>), or create them (for an emulator: 'floe run --backend aws --create-resources'), and check AWS_REGION",
        );
      }
    },
    backend: awsSavepointBackend({ clients, stateTable, controlTable, bucket, savepoints }),
    runArgs,
    // A suggested replay reads the savepoint where this command found it.
    commandArgs: [
      ...runArgs,
      ...(values['savepoint-dir'] === undefined ? [] : ['--savepoint-dir', values['savepoint-dir']]),
    ].join(' '),
    async close() {
      clients.destroy();
    },
  };
}
