/**
 * Job status on AWS (`floe status --backend aws`): per shard of the job's Kinesis stream, the
 * checkpoint (position, watermark, commit number, finished), the lag, the pending timers, the
 * lease and the outbox outputs not yet published; and the job record. Read-only: it reads the
 * control table (job record, lease and checkpoint items, outbox), the bucket (large checkpoints,
 * outbox entries of large commits) and the stream (ListShards, and one GetRecords of one record
 * per unfinished shard for the lag).
 */
import { ResourceNotFoundException } from '@aws-sdk/client-dynamodb';
import {
  errorMessage,
  pendingTimerCount,
  type ShardCheckpoint,
  type ShardInfo,
  type StartPosition,
} from '../core/index.ts';
import {
  checkStatusStream,
  generationOf,
  type JobLookup,
  type JobRecord,
  type JobRecordSummary,
  jobRecordSummary,
} from '../runtime/job-control.ts';
import { DynamoBackend, mapLimit } from './dynamodb-backend.ts';
import type { AwsClientsBundle } from './job.ts';
import { DynamoJobStore } from './job-store.ts';
import { decodePosition, KinesisSource } from './kinesis-source.ts';
import { checkResources, type JobResources } from './resources.ts';

export interface AwsStatusOptions extends Omit<JobResources, 'stream'> {
  readonly job: string;
  /** The job's stream. @default the job record's stream, else the job id */
  readonly stream?: string;
  /**
   * The state generation of a job without a job record (a StreamProcessor's `generation` prop;
   * the job record's wins). @default 0
   */
  readonly generation?: number;
  /** Called with the job record (undefined: none) once read; throwing refuses the status. */
  readonly checkRecord?: (record: JobRecord | undefined) => void;
  /** Shards read at once. @default 8 */
  readonly concurrency?: number;
  /** The error message's advice when a resource is missing. */
  readonly missingResourcesHint?: string;
  readonly now?: () => number;
}

export type AwsShardState = 'open' | 'closed' | 'done' | 'gone';

export interface AwsShardLease {
  /** The lease owner (a Lambda request id, or the owner name of `floe run` / a savepoint). */
  readonly owner: string;
  /** Epoch ms; 0 once released. */
  readonly expiresAt: number;
  /** Whether the lease is held now (expiresAt in the future). */
  readonly held: boolean;
}

export interface AwsShardStatus {
  readonly shardId: string;
  /**
   * open; closed (by a reshard, records left to read); done (read to its end); gone (has a
   * checkpoint but the stream no longer lists it: trimmed after a reshard, or another stream).
   */
  readonly state: AwsShardState;
  readonly parentShardIds: readonly string[];
  /** Whether the job has a checkpoint for the shard (it has committed there). */
  readonly checkpointed: boolean;
  /** floe position of the last committed record (Kinesis sequence number + 7 sub-record digits). */
  readonly position: string | undefined;
  /** The Kinesis sequence number of that record. */
  readonly sequenceNumber: string | undefined;
  /** The user record within a KPL aggregate, when the position is inside one. */
  readonly subSequenceNumber?: number;
  readonly commitNumber: number;
  /** Event-time watermark (-Infinity before the first element, +Infinity once finished). */
  readonly watermark: number;
  readonly finished: boolean;
  /**
   * Whether no record follows the position (as of one GetRecords); undefined when not read.
   */
  readonly caughtUp?: boolean;
  /**
   * Age in ms of the oldest record not yet processed (its arrival time in Kinesis to now); 0 when
   * caught up. Undefined for a shard the stream no longer lists, or when it could not be read
   * (see lagError).
   */
  readonly lagMs?: number;
  /** Why the lag could not be read. */
  readonly lagError?: string;
  /** Pending event- and processing-time timers. */
  readonly pendingTimers: number;
  /** Committed outputs not yet published to their sinks (the outbox). */
  readonly unpublishedOutputs: number;
  /** The shard's lease, if a worker, `floe run` or a savepoint ever took it. */
  readonly lease: AwsShardLease | undefined;
}

/** The job record as `floe status --json` shows it (the same on both backends). */
export type AwsJobRecordSummary = JobRecordSummary;

export interface AwsJobStatus {
  readonly backend: 'aws';
  readonly job: string;
  readonly stream: string;
  readonly generation: number;
  readonly stateTable: string;
  readonly controlTable: string;
  readonly bucket: string;
  /** When the status was read (epoch ms). */
  readonly at: number;
  /** The job record; undefined for a job that never ran with a record (e.g. an older `floe run`). */
  readonly record: AwsJobRecordSummary | undefined;
  /** False when the job has neither a job record nor a checkpoint: it never ran, or the names are wrong. */
  readonly known: boolean;
  readonly shards: readonly AwsShardStatus[];
}

/** Reads the status of an AWS job. Throws a ConfigurationError naming missing resources. */
export async function awsJobStatus(
  clients: Pick<AwsClientsBundle, 'kinesis' | 'dynamodb' | 's3'>,
  options: AwsStatusOptions,
): Promise<AwsJobStatus> {
  const now = options.now ?? Date.now;
  const resources = (stream: string): JobResources => ({
    stream,
    stateTable: options.stateTable,
    controlTable: options.controlTable,
    bucket: options.bucket,
  });
  const jobs = new DynamoJobStore(clients.dynamodb, options.controlTable);
  let found: JobLookup;
  try {
    found = await jobs.lookup(options.job);
  } catch (error) {
    if (!(error instanceof ResourceNotFoundException)) throw error;
    // Name every missing resource at once (the control table at least).
    await checkResources(clients, resources(options.stream ?? options.job), options.missingResourcesHint);
    throw error;
  }
  const record = found.record;
  options.checkRecord?.(record);
  checkStatusStream(record, options.stream);
  const stream = options.stream ?? record?.stream ?? options.job;
  await checkResources(clients, resources(stream), options.missingResourcesHint);

  // Without a record, the generation its Lambda workers run (openAwsJobFromRecord).
  const generation = generationOf(found, options.generation);
  const backend = new DynamoBackend({
    dynamodb: clients.dynamodb,
    s3: clients.s3,
    stateTable: options.stateTable,
    controlTable: options.controlTable,
    bucket: options.bucket,
    job: options.job,
    generation,
  });
  const source = new KinesisSource({ client: clients.kinesis, stream });
  const [listed, checkpoints] = await Promise.all([source.listShards(), backend.listCheckpoints()]);
  const byId = new Map<string, { info?: ShardInfo; checkpoint?: ShardCheckpoint }>();
  for (const info of listed) byId.set(info.shardId, { info });
  for (const checkpoint of checkpoints) {
    byId.set(checkpoint.shardId, { ...byId.get(checkpoint.shardId), checkpoint });
  }
  const ids = [...byId.keys()].sort();
  const at = now();
  const start: StartPosition = record?.startPosition ?? { type: 'TRIM_HORIZON' };
  const shards = new Map<string, AwsShardStatus>();
  await mapLimit(ids, Math.max(1, options.concurrency ?? 8), async (shardId) => {
    const { info, checkpoint } = byId.get(shardId)!;
    const finished = checkpoint?.finished ?? false;
    const state: AwsShardState = finished
      ? 'done'
      : info === undefined
        ? 'gone'
        : info.closed
          ? 'closed'
          : 'open';
    const [lease, unpublished, lag] = await Promise.all([
      backend.leaseInfo(shardId),
      backend.unpublishedOutputs(shardId),
      finished
        ? Promise.resolve({ caughtUp: true, lagMs: 0 })
        : info === undefined
          ? Promise.resolve(undefined)
          : readLag(source, shardId, checkpoint, start, now),
    ]);
    const decoded = decode(checkpoint?.position);
    shards.set(shardId, {
      shardId,
      state,
      parentShardIds: info?.parentShardIds ?? [],
      checkpointed: checkpoint !== undefined,
      position: checkpoint?.position,
      sequenceNumber: decoded?.sequenceNumber,
      ...(decoded?.subSequenceNumber === undefined ? {} : { subSequenceNumber: decoded.subSequenceNumber }),
      commitNumber: checkpoint?.commitNumber ?? 0,
      watermark: checkpoint?.watermark ?? Number.NEGATIVE_INFINITY,
      finished,
      ...(lag ?? {}),
      pendingTimers: checkpoint === undefined ? 0 : pendingTimerCount(checkpoint),
      unpublishedOutputs: unpublished.length,
      lease:
        lease === undefined
          ? undefined
          : { owner: lease.owner, expiresAt: lease.expiresAt, held: lease.expiresAt > at },
    });
  });
  return {
    backend: 'aws',
    job: options.job,
    stream,
    generation,
    stateTable: options.stateTable,
    controlTable: options.controlTable,
    bucket: options.bucket,
    at,
    record: record === undefined ? undefined : jobRecordSummary(record),
    known: record !== undefined || checkpoints.length > 0,
    shards: ids.map((id) => shards.get(id)!),
  };
}

function decode(
  position: string | undefined,
): { sequenceNumber: string; subSequenceNumber?: number } | undefined {
  if (position === undefined) return undefined;
  try {
    const { sequenceNumber, subIndex } = decodePosition(position);
    return subIndex === 'last' ? { sequenceNumber } : { sequenceNumber, subSequenceNumber: subIndex };
  } catch {
    return { sequenceNumber: position }; // not a KinesisSource position: shown as it is
  }
}

/**
 * The lag of a shard from one GetRecords of one record where its worker would read next: the age
 * of that record (0 when there is none and Kinesis reports the reader caught up). Kinesis may
 * return no record while behind (a sparse shard); then MillisBehindLatest is the lag.
 */
async function readLag(
  source: KinesisSource,
  shardId: string,
  checkpoint: ShardCheckpoint | undefined,
  start: StartPosition,
  now: () => number,
): Promise<{ caughtUp: boolean; lagMs: number } | { lagError: string }> {
  try {
    const reader = await source.openReader(
      shardId,
      checkpoint?.position !== undefined
        ? { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber: checkpoint.position }
        : start,
    );
    try {
      const read = await reader.read(1);
      const next = read.records[0];
      if (next !== undefined) return { caughtUp: false, lagMs: Math.max(0, now() - next.arrivalTime) };
      return { caughtUp: read.millisBehindLatest === 0, lagMs: read.millisBehindLatest };
    } finally {
      await reader.close();
    }
  } catch (error) {
    return { lagError: errorMessage(error) };
  }
}
