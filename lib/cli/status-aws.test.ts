/** `floe status --backend aws`: flags and the text form (the AWS reads: infra-tests/aws/status.test.ts). */
import { describe, expect, it } from 'vitest';
import type { AwsJobStatus, AwsShardStatus } from '../aws/status.ts';
import { UsageError } from './args.ts';
import { runStatus } from './status.ts';
import { formatAwsStatus, formatDuration } from './status-aws.ts';

const AT = Date.UTC(2026, 0, 1, 10, 0, 0);

function shard(id: number, over: Partial<AwsShardStatus> = {}): AwsShardStatus {
  return {
    shardId: `shardId-00000000000${id}`,
    state: 'open',
    parentShardIds: [],
    checkpointed: true,
    position: `49600000000000000000000000000000000000000000000000000000${id}9999999`,
    sequenceNumber: `49600000000000000000000000000000000000000000000000000000${id}`,
    commitNumber: 12,
    watermark: Date.UTC(2026, 0, 1, 9, 59, 0),
    finished: false,
    caughtUp: true,
    lagMs: 0,
    pendingTimers: 40,
    unpublishedOutputs: 0,
    lease: undefined,
    ...over,
  };
}

function status(shards: AwsShardStatus[], over: Partial<AwsJobStatus> = {}): AwsJobStatus {
  return {
    backend: 'aws',
    job: 'page-views',
    stream: 'clicks',
    generation: 1,
    stateTable: 'st',
    controlTable: 'ct',
    bucket: 'b',
    at: AT,
    record: { state: 'running', generation: 1, stream: 'clicks', updatedAt: AT - 1000 },
    known: true,
    shards,
    ...over,
  };
}

describe('floe status flags', () => {
  it('takes the AWS resource flags only with --backend aws, and --data-dir only without', async () => {
    await expect(runStatus(['--job', 'j', '--state-table', 't'])).rejects.toThrow(
      new UsageError('--state-table needs --backend aws'),
    );
    await expect(runStatus(['--job', 'j', '--bucket', 'b'])).rejects.toThrow('--bucket needs --backend aws');
    await expect(runStatus(['--job', 'j', '--generation', '2'])).rejects.toThrow(
      '--generation needs --backend aws',
    );
    await expect(runStatus(['--job', 'j', '--backend', 'aws', '--generation', '1.5'])).rejects.toThrow(
      '--generation must be a whole number >= 0; received "1.5"',
    );
    await expect(runStatus(['--job', 'j', '--backend', 'aws', '--data-dir', '.floe'])).rejects.toThrow(
      /--data-dir is for the embedded backend/,
    );
    await expect(runStatus(['--job', 'j', '--backend', 'kafka'])).rejects.toThrow(
      '--backend must be one of embedded, aws; received "kafka"',
    );
    await expect(runStatus(['--job', 'a#b', '--backend', 'aws'])).rejects.toThrow(
      /a job id is 1-100 letters/,
    );
  });
});

describe('formatAwsStatus', () => {
  it('prints one aligned line per shard: state, commits, watermark, lag, timers, unpublished, lease, position', () => {
    const lines = formatAwsStatus(
      status([
        shard(0, {
          lease: { owner: 'worker-7f3a', expiresAt: AT + 5000, held: true },
          unpublishedOutputs: 3,
        }),
        shard(1, {
          caughtUp: false,
          lagMs: 95_000,
          position: '4960000000000000000000000000000000000000000000000000000010000002',
          sequenceNumber: '496000000000000000000000000000000000000000000000000000001',
          subSequenceNumber: 2,
          lease: { owner: 'worker-1', expiresAt: 0, held: false },
        }),
        shard(2, {
          state: 'done',
          finished: true,
          watermark: Number.POSITIVE_INFINITY,
          pendingTimers: 0,
          parentShardIds: ['shardId-000000000000'],
        }),
        shard(3, {
          checkpointed: false,
          position: undefined,
          sequenceNumber: undefined,
          commitNumber: 0,
          watermark: Number.NEGATIVE_INFINITY,
          pendingTimers: 0,
          caughtUp: undefined,
          lagMs: undefined,
          lagError: 'stream clicks has no shard shardId-000000000003',
        }),
      ]),
    );
    expect(lines).toEqual([
      'job page-views on stream clicks (generation 1, running)',
      'shard                 state  commits  watermark             lag        timers  unpublished  lease                                   position',
      'shardId-000000000000  open        12  2026-01-01T09:59:00Z  caught up      40            3  worker-7f3a until 2026-01-01T10:00:05Z  496000000000000000000000000000000000000000000000000000000',
      'shardId-000000000001  open        12  2026-01-01T09:59:00Z  1.6 min        40            0  free                                    496000000000000000000000000000000000000000000000000000001/2',
      'shardId-000000000002  done        12  +inf                  caught up       0            0  -                                       496000000000000000000000000000000000000000000000000000002',
      'shardId-000000000003  open         0  -inf                  ?               0            0  -                                       -',
      'lag of shardId-000000000003 unknown: stream clicks has no shard shardId-000000000003',
    ]);
  });

  it('says what the job record says, and when the job is unknown', () => {
    const record = {
      state: 'stopped' as const,
      generation: 2,
      stream: 'clicks',
      updatedAt: AT,
      restoredFrom: { savepointId: 'sp-1', at: AT - 10 },
      stoppedBy: { savepointId: 'sp-2', at: AT },
    };
    expect(formatAwsStatus(status([], { record, generation: 2 }))).toEqual([
      'job page-views on stream clicks (generation 2, stopped, restored from savepoint sp-1, stopped with savepoint sp-2)',
      'shard  state  commits  watermark  lag  timers  unpublished  lease  position',
      '(stream clicks has no shards)',
    ]);
    const pausing = {
      state: 'pausing' as const,
      generation: 0,
      stream: 'clicks',
      updatedAt: AT,
      savepoint: { id: 'sp-3', owner: 'savepoint:sp-3', expiresAt: AT + 30_000 },
    };
    expect(formatAwsStatus(status([shard(0)], { record: pausing }))[0]).toBe(
      'job page-views on stream clicks (generation 0, pausing, savepoint sp-3 in progress)',
    );
    const unknown = formatAwsStatus(
      status([shard(0, { checkpointed: false })], { record: undefined, known: false, generation: 0 }),
    );
    expect(unknown[0]).toBe('job page-views on stream clicks (generation 0, no job record)');
    expect(unknown.at(-1)).toBe(
      'job page-views has no job record and no checkpoint in ct: it has not run yet, or --job / --control-table name another job',
    );
  });

  it('formats durations', () => {
    expect(formatDuration(0)).toBe('0 ms');
    expect(formatDuration(999)).toBe('999 ms');
    expect(formatDuration(1_500)).toBe('1.5 s');
    expect(formatDuration(90_000)).toBe('1.5 min');
    expect(formatDuration(7_200_000)).toBe('2.0 h');
  });
});
