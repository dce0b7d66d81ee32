/** `floe status --backend aws`: the status of a job on Kinesis, DynamoDB and S3 (lib/aws/status.ts). */
import { awsClients, defaultResourceNames } from '../aws/job.ts';
import { type AwsJobStatus, type AwsShardStatus, awsJobStatus } from '../aws/status.ts';
import { checkGenerationFlag, formatCount, formatTime, raisedGenerationWarning } from './args.ts';
import { explainAwsError } from './run-aws.ts';

export interface StatusAwsOptions {
  readonly job: string;
  readonly stream: string | undefined;
  readonly stateTable: string | undefined;
  readonly controlTable: string | undefined;
  readonly bucket: string | undefined;
  /** State generation of a job without a job record (checkGenerationFlag). @default 0 */
  readonly generation: number | undefined;
  readonly json: boolean;
}

export async function runStatusAws(options: StatusAwsOptions): Promise<number> {
  const defaults = defaultResourceNames(options.job);
  const clients = awsClients();
  try {
    const status = await awsJobStatus(clients, {
      job: options.job,
      ...(options.stream === undefined ? {} : { stream: options.stream }),
      stateTable: options.stateTable ?? defaults.stateTable,
      controlTable: options.controlTable ?? defaults.controlTable,
      bucket: options.bucket ?? defaults.bucket,
      ...(options.generation === undefined
        ? {}
        : {
            generation: options.generation,
            checkRecord: (record) => checkGenerationFlag(options.job, options.generation, record),
          }),
      missingResourcesHint:
        'pass the job\'s resources with --stream, --state-table, --control-table and --bucket (a StreamProcessor stack\'s outputs name them; the defaults are those of "floe run --backend aws"), and check AWS_REGION',
    });
    const raised = raisedGenerationWarning('status', options.job, options.generation, status.generation);
    if (raised !== undefined) console.error(raised);
    if (options.json) {
      console.log(
        JSON.stringify(status, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 2),
      );
    } else {
      for (const line of formatAwsStatus(status)) console.log(line);
    }
    return 0;
  } catch (error) {
    throw explainAwsError(error);
  } finally {
    clients.destroy();
  }
}

/** The text form: a heading line, one line per shard, notes. */
export function formatAwsStatus(status: AwsJobStatus): string[] {
  const r = status.record;
  const details =
    r === undefined
      ? [`generation ${status.generation}`, 'no job record']
      : [
          `generation ${r.generation}`,
          r.state,
          ...(r.savepoint !== undefined && r.savepoint.expiresAt > status.at
            ? [`savepoint ${r.savepoint.id} in progress`]
            : []),
          ...(r.restore !== undefined ? [`restoring savepoint ${r.restore.savepointId}`] : []),
          ...(r.restoredFrom !== undefined ? [`restored from savepoint ${r.restoredFrom.savepointId}`] : []),
          ...(r.stoppedBy !== undefined ? [`stopped with savepoint ${r.stoppedBy.savepointId}`] : []),
        ];
  const rows = status.shards.map((s) => [
    s.shardId,
    s.state,
    String(s.commitNumber),
    formatTime(s.watermark),
    lagText(s),
    formatCount(s.pendingTimers),
    formatCount(s.unpublishedOutputs),
    leaseText(s, status.at),
    s.sequenceNumber === undefined
      ? '-'
      : `${s.sequenceNumber}${s.subSequenceNumber === undefined ? '' : `/${s.subSequenceNumber}`}`,
  ]);
  const header = [
    'shard',
    'state',
    'commits',
    'watermark',
    'lag',
    'timers',
    'unpublished',
    'lease',
    'position',
  ];
  const right = new Set([2, 5, 6]); // numbers
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) =>
        i === cells.length - 1 ? c : right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!),
      )
      .join('  ');
  const lines = [
    `job ${status.job} on stream ${status.stream} (${details.join(', ')})`,
    line(header),
    ...rows.map(line),
  ];
  if (status.shards.length === 0) lines.push(`(stream ${status.stream} has no shards)`);
  for (const s of status.shards) {
    if (s.lagError !== undefined) lines.push(`lag of ${s.shardId} unknown: ${s.lagError}`);
  }
  if (!status.known) {
    lines.push(
      `job ${status.job} has no job record and no checkpoint in ${status.controlTable}: it has not run yet, or --job / --control-table name another job`,
    );
  }
  return lines;
}

function lagText(s: AwsShardStatus): string {
  if (s.lagMs === undefined) return s.lagError === undefined ? '-' : '?';
  if (s.caughtUp === true && s.lagMs === 0) return 'caught up';
  return formatDuration(s.lagMs);
}

function leaseText(s: AwsShardStatus, at: number): string {
  if (s.lease === undefined) return '-';
  if (s.lease.expiresAt <= at) return 'free';
  return `${s.lease.owner} until ${formatTime(s.lease.expiresAt)}`;
}

/** 850 ms, 12.3 s, 4.5 min, 2.0 h. */
export function formatDuration(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}
