/**
 * `floe status --backend aws` as a real child process against the emulators: a small job run with
 * `floe run --backend aws`, then its status (JSON and text) compared with what the control table
 * and the stream hold; a live lease and unpublished outbox outputs; and the error lines for
 * missing resources and missing credentials.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoBackend } from '../../lib/aws/dynamodb-backend.ts';
import { defaultResourceNames } from '../../lib/aws/job.ts';
import { putRecords } from '../../lib/aws/kinesis-source.ts';
import { createStream } from '../../lib/aws/resources.ts';
import type { AwsJobStatus } from '../../lib/aws/status.ts';
import { pendingTimerCount } from '../../lib/core/index.ts';
import { awsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { floeCli, NO_CREDENTIALS } from './floe-cli.ts';
import { putSamplePageViews, samplePageViewsRunArgs } from './sample-page-views.ts';

const env = await setupAwsTestEnv();
const clients = awsClients(env);
afterAll(() => clients.destroy());

const floe = floeCli(env);

const encode = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value));

describe('floe status --backend aws', () => {
  const job = uniqueName('pv');
  const stream = uniqueName('clicks');
  const names = defaultResourceNames(job);
  const backend = () =>
    new DynamoBackend({
      dynamodb: clients.dynamodb,
      s3: clients.s3,
      stateTable: names.stateTable,
      controlTable: names.controlTable,
      bucket: names.bucket,
      job,
    });
  const status = (extra: string[] = []): AwsJobStatus => {
    const r = floe(['status', '--backend', 'aws', '--job', job, '--json', ...extra]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout) as AwsJobStatus;
  };

  beforeAll(async () => {
    await createStream(clients.kinesis, stream, 2);
    // Pages /p0../p2 over 5 minutes of event time: the watermark (max ts - 5 s - 1) closes the
    // first 4 one-minute windows; the last minute's windows stay pending (timers).
    await putSamplePageViews(clients.kinesis, stream);
    const run = floe(samplePageViewsRunArgs(job, stream));
    expect(run.stderr).toMatch(/processed 300 records/);
    expect(run.code).toBe(0);
  }, 180_000);

  it('shows every shard as the control table holds it, caught up, with its pending timers', async () => {
    // No --stream: the job record names it.
    const s = status();
    expect(s).toMatchObject({
      backend: 'aws',
      job,
      stream,
      generation: 0,
      stateTable: names.stateTable,
      controlTable: names.controlTable,
      bucket: names.bucket,
      known: true,
      record: { state: 'running', generation: 0, stream },
    });
    expect(s.shards.map((x) => x.shardId)).toEqual(['shardId-000000000000', 'shardId-000000000001']);
    const checkpoints = new Map((await backend().listCheckpoints()).map((c) => [c.shardId, c]));
    let timers = 0;
    for (const shard of s.shards) {
      const cp = checkpoints.get(shard.shardId);
      expect(shard.state).toBe('open');
      expect(shard.finished).toBe(false);
      expect(shard.parentShardIds).toEqual([]);
      if (cp === undefined) {
        // The 3 pages may all hash to one shard: the other one never committed.
        expect(shard).toMatchObject({ checkpointed: false, commitNumber: 0, pendingTimers: 0 });
        expect(shard.watermark).toBe('-Infinity');
        continue;
      }
      expect(shard).toMatchObject({
        checkpointed: true,
        position: cp.position,
        commitNumber: cp.commitNumber,
        watermark: cp.watermark,
        pendingTimers: pendingTimerCount(cp),
        unpublishedOutputs: 0,
        caughtUp: true,
        lagMs: 0,
      });
      expect(cp.commitNumber).toBeGreaterThan(0);
      expect(cp.position!.startsWith(shard.sequenceNumber!)).toBe(true);
      // floe run released its lease when it stopped.
      expect(shard.lease).toMatchObject({ owner: expect.any(String), held: false });
      timers += shard.pendingTimers;
    }
    expect(timers).toBeGreaterThan(0); // the last minute's windows of each page
    expect(s.shards.some((x) => x.checkpointed)).toBe(true);
  });

  it('shows the lag of a shard with records not yet processed', async () => {
    await putRecords(clients.kinesis, stream, [
      { partitionKey: '/p0', data: encode({ page: '/p0', user: 'late', ts: Date.UTC(2026, 0, 1, 0, 6) }) },
    ]);
    const before = Date.now();
    const s = status(['--stream', stream]);
    const behind = s.shards.filter((x) => x.caughtUp === false);
    expect(behind).toHaveLength(1);
    expect(behind[0]!.lagMs).toBeGreaterThanOrEqual(0);
    expect(behind[0]!.lagMs).toBeLessThanOrEqual(Date.now() - before + 60_000);
    expect(s.shards.filter((x) => x.caughtUp === true)).toHaveLength(1);
  });

  it('shows a held lease and the outputs committed but not yet published', async () => {
    const store = backend();
    const checkpoints = await store.listCheckpoints();
    const cp = checkpoints[0]!;
    const lease = await store.acquireLease(cp.shardId, 'status-test-owner', Date.now(), 120_000);
    const commitNumber = cp.commitNumber + 1;
    await store.commit(lease, {
      checkpoint: { ...cp, commitNumber },
      mutations: [],
      outputs: [0, 1, 2].map((i) => ({
        id: `${job}/${cp.shardId}/${commitNumber}/${i}`,
        sink: 'page-view-counts',
        value: { page: '/p9', windowStart: 0, windowEnd: 60_000, views: i },
      })),
    });
    const s = status();
    const shard = s.shards.find((x) => x.shardId === cp.shardId)!;
    expect(shard).toMatchObject({
      commitNumber,
      unpublishedOutputs: 3,
      lease: { owner: 'status-test-owner', held: true, expiresAt: lease.expiresAt },
    });

    const text = floe(['status', '--backend', 'aws', '--job', job]);
    expect(text.code).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines[0]).toBe(`job ${job} on stream ${stream} (generation 0, running)`);
    expect(lines[1]).toMatch(/^shard +state +commits +watermark +lag +timers +unpublished +lease +position$/);
    const row = lines.find((l) => l.startsWith(cp.shardId))!;
    expect(row).toMatch(
      new RegExp(
        `^${cp.shardId}  open +${commitNumber}  \\S+ +(caught up|[\\d.]+ (ms|s|min|h)) +\\d+ +3  status-test-owner until \\S+  \\d+$`,
      ),
    );
    expect(lines).toHaveLength(4);

    // The job record names the generation: a flag agreeing with it is fine, another is refused.
    expect(floe(['status', '--backend', 'aws', '--job', job, '--generation', '0']).code).toBe(0);
    const refused = floe(['status', '--backend', 'aws', '--job', job, '--generation', '2']);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toBe(
      `floe: --generation 2: job "${job}" has a job record, which names generation 0 (a replay moves it); drop --generation, which is only for a job without a record`,
    );
    await store.releaseLease(lease);
  });

  it('notes a job that has neither a job record nor a checkpoint in the tables', () => {
    const other = uniqueName('other');
    const r = floe([
      'status',
      '--backend',
      'aws',
      '--job',
      other,
      '--stream',
      stream,
      '--state-table',
      names.stateTable,
      '--control-table',
      names.controlTable,
      '--bucket',
      names.bucket,
      '--generation',
      '3',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`job ${other} on stream ${stream} (generation 3, no job record)`);
    expect(r.stdout).toContain(`job ${other} has no job record and no checkpoint in ${names.controlTable}`);
  });

  it('names every missing resource and what to pass, in one line, without a stack trace', () => {
    const missing = uniqueName('nope');
    const r = floe(['status', '--backend', 'aws', '--job', missing]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const n = defaultResourceNames(missing);
    expect(r.stderr).toContain(
      `floe: missing Kinesis stream "${missing}", DynamoDB table "${n.stateTable}", DynamoDB table "${n.controlTable}", S3 bucket "${n.bucket}" in region us-east-1; pass the job's resources with --stream, --state-table, --control-table and --bucket`,
    );
    // Only the stream missing: the tables and bucket exist (those of `job`, for a job without a record).
    const resources = [
      '--state-table',
      names.stateTable,
      '--control-table',
      names.controlTable,
      '--bucket',
      names.bucket,
    ];
    const r2 = floe([
      'status',
      '--backend',
      'aws',
      '--job',
      uniqueName('fresh'),
      '--stream',
      missing,
      ...resources,
    ]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(new RegExp(`^floe: missing Kinesis stream "${missing}" in region`));
    // A job with a record reads its own stream: another --stream is refused, as floe run refuses it.
    const r3 = floe(['status', '--backend', 'aws', '--job', job, '--stream', missing]);
    expect(r3.code).toBe(1);
    expect(r3.stderr.trim()).toBe(
      `floe: job ${job} reads stream "${stream}", not "${missing}"; its checkpoints are positions in "${stream}". Leave out --stream, or pass --stream ${stream}`,
    );
  });

  it('says when no credentials are configured', () => {
    const r = floe(['status', '--backend', 'aws', '--job', job], NO_CREDENTIALS);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^floe: no AWS credentials found/);
  });
});
