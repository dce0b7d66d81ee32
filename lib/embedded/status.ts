/** Job status on the embedded backend: per shard position, lag, watermark and last commit. */
import {
  DEAD_LETTER_SINK,
  deserializeCheckpoint,
  pendingTimerCount,
  type ShardCheckpoint,
  type StartPosition,
} from '../core/index.ts';
import {
  type JobRecord,
  type JobRecordSummary,
  jobRecordSummary,
  outputJobId,
} from '../runtime/job-control.ts';
import { outputTableName } from './sinks.ts';
import type { SqliteDatabase } from './sqlite.ts';

export interface ShardStatus {
  readonly shardId: string;
  readonly closed: boolean;
  /** Records of the shard the job reads: stored (not trimmed), from its start position. */
  readonly records: number;
  /** Those after the job's checkpoint position (not processed yet). */
  readonly lag: number;
  readonly checkpoint: ShardCheckpoint | undefined;
}

export interface JobStatus {
  readonly job: string;
  readonly stream: string;
  readonly shards: readonly ShardStatus[];
  /** Published outputs per sink, of the generation shown (the table holds every generation's). */
  readonly outputs: Readonly<Record<string, number>>;
  readonly deadLetters: number;
}

function tableExists(db: SqliteDatabase, name: string): boolean {
  return (
    db.prepare('SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?').get('table', name) !== undefined
  );
}

/**
 * `startPosition`: where the job's readers start in a shard without a checkpoint (the job record's,
 * e.g. AT_TIMESTAMP after 'floe replay --from-timestamp'); records before it are not the job's.
 */
export function jobStatus(
  db: SqliteDatabase,
  job: string,
  stream: string,
  generation = 0,
  startPosition?: StartPosition,
): JobStatus {
  const shards = db
    .prepare<[string], { shard_id: string; closed_at: number | null }>(
      'SELECT shard_id, closed_at FROM floe_log_shard WHERE stream = ? AND deleted = 0 ORDER BY idx',
    )
    .all(stream);
  const countAfter = db.prepare<[string, string, number], { n: number }>(
    'SELECT count(*) AS n FROM floe_log_record WHERE stream = ? AND shard_id = ? AND seq > ?',
  );
  // As LocalLog.startPosition: the last record that arrived before the timestamp.
  const lastBefore = db.prepare<[string, string, number], { seq: number }>(
    'SELECT seq FROM floe_log_record WHERE stream = ? AND shard_id = ? AND arrival < ? ORDER BY arrival DESC, seq DESC LIMIT 1',
  );
  const start = (shardId: string): number =>
    startPosition?.type === 'AT_TIMESTAMP'
      ? (lastBefore.get(stream, shardId, startPosition.timestamp)?.seq ?? 0)
      : 0;
  const checkpoints = new Map<string, ShardCheckpoint>();
  if (tableExists(db, 'floe_checkpoint')) {
    for (const row of db
      .prepare<[string, number], { shard_id: string; body: string }>(
        'SELECT shard_id, body FROM floe_checkpoint WHERE job = ? AND generation = ?',
      )
      .all(job, generation)) {
      checkpoints.set(row.shard_id, deserializeCheckpoint(row.body));
    }
  }
  const outputs: Record<string, number> = {};
  const table = outputTableName(job);
  if (tableExists(db, table)) {
    // Output ids start with the generation's job id (`job/...`, `job@2/...`): a replay's new
    // generation publishes into the same table, and its status counts only its own outputs.
    const prefix = `${outputJobId(job, generation)}/`;
    for (const row of db
      .prepare<[{ prefix: string }], { sink: string; n: number }>(
        `SELECT sink, count(*) AS n FROM "${table}" WHERE substr(id, 1, length(@prefix)) = @prefix GROUP BY sink`,
      )
      .all({ prefix })) {
      outputs[row.sink] = row.n;
    }
  }
  return {
    job,
    stream,
    shards: shards.map((s) => {
      const checkpoint = checkpoints.get(s.shard_id);
      const from = start(s.shard_id);
      const position =
        checkpoint?.position === undefined ? from : Math.max(from, Number(checkpoint.position));
      return {
        shardId: s.shard_id,
        closed: s.closed_at !== null,
        records: countAfter.get(stream, s.shard_id, from)!.n,
        lag: countAfter.get(stream, s.shard_id, position)!.n,
        checkpoint,
      };
    }),
    outputs,
    deadLetters: outputs[DEAD_LETTER_SINK] ?? 0,
  };
}

/** open; closed (by a reshard, records left to read); done (read to its end). */
export type EmbeddedShardState = 'open' | 'closed' | 'done';

export function shardState(shard: ShardStatus): EmbeddedShardState {
  return shard.checkpoint?.finished ? 'done' : shard.closed ? 'closed' : 'open';
}

/**
 * A shard in `floe status --json`: the fields of the AWS status that the embedded backend has
 * (lib/aws/status.ts AwsShardStatus), then its own lag in records. docs/cli.md describes them.
 */
export interface EmbeddedShardStatusJson {
  readonly shardId: string;
  readonly state: EmbeddedShardState;
  readonly checkpointed: boolean;
  /** Local-log sequence number of the last committed record. */
  readonly position: string | undefined;
  readonly commitNumber: number;
  /** -Infinity before the first element, +Infinity once finished. */
  readonly watermark: number;
  readonly finished: boolean;
  readonly pendingTimers: number;
  /** Records of the shard the job reads, from its start position. */
  readonly records: number;
  /** Those not processed yet. */
  readonly lag: number;
}

/** `floe status --json` on the embedded backend: the AWS status's shape where they share fields. */
export interface EmbeddedJobStatusJson {
  readonly backend: 'embedded';
  readonly job: string;
  readonly stream: string;
  readonly generation: number;
  /** When the status was read (epoch ms). */
  readonly at: number;
  readonly record: JobRecordSummary | undefined;
  /** False when the job has neither a job record nor a checkpoint: it never ran, or --job is wrong. */
  readonly known: boolean;
  readonly shards: readonly EmbeddedShardStatusJson[];
  readonly outputs: Readonly<Record<string, number>>;
  readonly deadLetters: number;
}

/**
 * The JSON form of a status: per shard the checkpoint's summary rather than the checkpoint itself,
 * whose internals (timers, timer log, idleness bookkeeping) are no part of the status.
 */
export function statusJson(
  status: JobStatus,
  generation: number,
  record: JobRecord | undefined,
  at: number,
): EmbeddedJobStatusJson {
  return {
    backend: 'embedded',
    job: status.job,
    stream: status.stream,
    generation,
    at,
    record: record === undefined ? undefined : jobRecordSummary(record),
    known: record !== undefined || status.shards.some((s) => s.checkpoint !== undefined),
    shards: status.shards.map((s) => ({
      shardId: s.shardId,
      state: shardState(s),
      checkpointed: s.checkpoint !== undefined,
      position: s.checkpoint?.position,
      commitNumber: s.checkpoint?.commitNumber ?? 0,
      watermark: s.checkpoint?.watermark ?? Number.NEGATIVE_INFINITY,
      finished: s.checkpoint?.finished ?? false,
      pendingTimers: s.checkpoint === undefined ? 0 : pendingTimerCount(s.checkpoint),
      records: s.records,
      lag: s.lag,
    })),
    outputs: status.outputs,
    deadLetters: status.deadLetters,
  };
}
