/** `floe run --backend aws` as a real child process against the emulators. */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, describe, expect, it } from 'vitest';
import { createStream } from '../../lib/aws/resources.ts';
import { floeCli, floeCliAsync, NO_CREDENTIALS } from '../aws/floe-cli.ts';
import { putSamplePageViews, samplePageViewsRunArgs } from '../aws/sample-page-views.ts';
import { createUpsertTable } from '../aws/upsert-tables.ts';
import { awsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { startRequestLog } from '../env/request-log.ts';

const env = await setupAwsTestEnv();
const clients = awsClients(env);
afterAll(() => clients.destroy());

const floe = floeCli(env);
const floeAsync = floeCliAsync(env);

describe('floe run --backend aws', () => {
  it('names every missing resource and the region, in one line, without a stack trace', () => {
    const r = floe([
      'run',
      'examples/page-views.ts',
      '--backend',
      'aws',
      '--stream',
      uniqueName('nope'),
      '--until-idle',
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^floe: missing Kinesis stream "nope-[^"]+", DynamoDB table "floe-page-views-state"/m,
    );
    expect(r.stderr).toMatch(/in region us-east-1/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('says when no credentials are configured', () => {
    const r = floe(['run', 'examples/page-views.ts', '--backend', 'aws', '--until-idle'], NO_CREDENTIALS);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^floe: no AWS credentials found/);
  });

  it('says when no region is configured', () => {
    const r = floe(['run', 'examples/page-views.ts', '--backend', 'aws', '--until-idle'], {
      AWS_REGION: undefined,
      AWS_DEFAULT_REGION: undefined,
      AWS_CONFIG_FILE: '/nonexistent',
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^floe: no AWS region configured/);
  });

  it('says when the endpoint host cannot be resolved, naming the host', () => {
    const r = floe(['run', 'examples/page-views.ts', '--backend', 'aws', '--until-idle'], {
      AWS_ENDPOINT_URL_DYNAMODB: 'http://no-such-host.invalid:4566',
    });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^floe: cannot resolve the AWS endpoint host "no-such-host\.invalid" \(ENOTFOUND\): check the host in AWS_ENDPOINT_URL/,
    );
  });

  it('says when the endpoint answers with something that is not AWS (a web server, a wrong port)', async () => {
    const server = createServer((_req, res) => {
      res.writeHead(404, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>Not Found</title>');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const r = await floeAsync(['run', 'examples/page-views.ts', '--backend', 'aws', '--until-idle'], {
        AWS_ENDPOINT_URL_DYNAMODB: `http://127.0.0.1:${port}`,
      });
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(
        /^floe: the AWS endpoint answered with something that is not an AWS response \(HTTP 404\): check AWS_ENDPOINT_URL/,
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('creates resources only with --create-resources, then runs the job to idle and publishes its outputs', async () => {
    const job = uniqueName('pv');
    const stream = uniqueName('clicks');
    await createStream(clients.kinesis, stream, 2);
    await putSamplePageViews(clients.kinesis, stream);
    const r = floe(samplePageViewsRunArgs(job, stream));
    expect(r.stderr).toMatch(/processed 300 records/);
    expect(r.code).toBe(0);
    // Unbound sinks go to s3://floe-<job>/outputs/<job>/: the kinesis-local arrival times are
    // now, so only the windows closed by event time (not idleness) have fired yet.
    const bucket = `floe-${job}`;
    const listed = await clients.s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: `outputs/${job}/` }),
    );
    const lines: Array<{ id: string; value: { page: string; windowStart: number; views: number } }> = [];
    for (const o of listed.Contents ?? []) {
      if (!o.Key?.includes('page-view-counts')) continue;
      const body = await clients.s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key }));
      for (const l of (await body.Body!.transformToString()).split('\n')) if (l) lines.push(JSON.parse(l));
    }
    // Event time spans 5 minutes; the watermark (max ts - 5 s - 1) closes the first 4 windows.
    const counts = new Map(lines.map((l) => [`${l.value.page}@${l.value.windowStart}`, l.value.views]));
    expect(counts.size).toBe(12);
    expect([...counts.values()].reduce((a, b) => a + b, 0)).toBe(240);
  });

  it('--generation runs the generation of a job without a record; a job whose record names another refuses it', async () => {
    const job = uniqueName('gen');
    const stream = uniqueName('clicks');
    await createStream(clients.kinesis, stream, 2);
    await putSamplePageViews(clients.kinesis, stream);
    const r = floe([...samplePageViewsRunArgs(job, stream), '--generation', '2']);
    expect(r.stderr).toMatch(/processed 300 records/);
    expect(r.code).toBe(0);
    // Output ids name the generation (<job>@<generation>/...).
    const listed = await clients.s3.send(
      new ListObjectsV2Command({ Bucket: `floe-${job}`, Prefix: `outputs/${job}/` }),
    );
    const ids: string[] = [];
    for (const o of listed.Contents ?? []) {
      const body = await clients.s3.send(new GetObjectCommand({ Bucket: `floe-${job}`, Key: o.Key! }));
      for (const l of (await body.Body!.transformToString()).split('\n')) if (l) ids.push(JSON.parse(l).id);
    }
    expect(ids.length).toBeGreaterThan(0);
    for (const id of ids) expect(id.startsWith(`${job}@2/`), id).toBe(true);
    // The run wrote the job record at generation 2: another generation is refused, the same one runs.
    const refused = floe([...samplePageViewsRunArgs(job, stream), '--generation', '0']);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toBe(
      `floe: --generation 0: job "${job}" has a job record, which names generation 2 (a replay moves it); drop --generation, which is only for a job without a record`,
    );
    expect(floe([...samplePageViewsRunArgs(job, stream), '--generation', '2']).code).toBe(0);
  });

  // DescribeTable counted by a proxy in front of the DynamoDB endpoint (the child process sends
  // through it). Before, the run described the control table twice: once to read the job
  // record's stream, again in the check of every resource.
  it.skipIf(!env.endpoints.dynamodb?.startsWith('http://'))(
    'describes the control table once at start-up, and still names it when it is missing',
    async () => {
      const job = uniqueName('once');
      const stream = uniqueName('clicks');
      await createStream(clients.kinesis, stream, 1);
      expect(floe(samplePageViewsRunArgs(job, stream)).code).toBe(0);
      const log = await startRequestLog(env.endpoints.dynamodb!);
      const viaLog = { AWS_ENDPOINT_URL_DYNAMODB: log.url };
      try {
        const controlTable = `floe-${job}-control`;
        const described = (table: string) => log.count('DescribeTable', (b) => b.TableName === table);
        const again = await floeAsync(
          ['run', 'examples/page-views.ts', '--backend', 'aws', '--job', job, '--until-idle'],
          viaLog,
        );
        expect(again.stderr).toMatch(new RegExp(`job "${job}" processed 0 records from ${stream} `));
        expect(again.code).toBe(0);
        expect(described(controlTable)).toBe(1);
        expect(described(`floe-${job}-state`)).toBe(1);

        // A job whose tables do not exist: each is described once, and both are named.
        const none = uniqueName('none');
        const missing = await floeAsync(
          ['run', 'examples/page-views.ts', '--backend', 'aws', '--job', none, '--stream', stream],
          viaLog,
        );
        expect(missing.code).toBe(1);
        expect(missing.stderr.trim()).toMatch(
          new RegExp(
            `^floe: missing DynamoDB table "floe-${none}-state", DynamoDB table "floe-${none}-control", S3 bucket "floe-${none}" in region `,
          ),
        );
        expect(described(`floe-${none}-control`)).toBe(1);
        expect(described(`floe-${none}-state`)).toBe(1);
      } finally {
        log.close();
      }
    },
    60_000,
  );

  it('a stopped job: the resume command floe prints names the AWS backend and the job, and works as printed', async () => {
    const job = uniqueName('stopped');
    const stream = uniqueName('clicks');
    await createStream(clients.kinesis, stream, 2);
    await putSamplePageViews(clients.kinesis, stream);
    expect(floe(samplePageViewsRunArgs(job, stream)).code).toBe(0);
    const stop = floe([
      'savepoint',
      'create',
      '--backend',
      'aws',
      '--job',
      job,
      '--stop',
      '--progress',
      'none',
    ]);
    expect(stop.code).toBe(0);
    const id = stop.stdout.trim();
    const resume = `floe replay --from-savepoint ${id} --backend aws --job ${job}`;
    expect(stop.stderr).toContain(`resume it with '${resume}'`);
    const refused = floe(['run', 'examples/page-views.ts', '--backend', 'aws', '--job', job, '--until-idle']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`resume it with '${resume}'`);
    // The printed command, as a user pastes it (here without running the job afterwards).
    const resumed = floe([...resume.split(' ').slice(1), '--restore-only']);
    expect(resumed.stderr).toMatch(new RegExp(`restored savepoint ${id} .* into job ${job}, generation 1`));
    expect(resumed.code).toBe(0);
  });

  it('refuses a --sink destination that does not exist, or a table key the binding does not name, before processing anything', async () => {
    const job = uniqueName('sinkchk');
    const stream = uniqueName('clicks');
    const table = uniqueName('counts');
    await createStream(clients.kinesis, stream, 2);
    await putSamplePageViews(clients.kinesis, stream);
    await createUpsertTable(clients.dynamodb, table, 'page', 'windowStart');
    const run = (...sinks: string[]) =>
      floe([...samplePageViewsRunArgs(job, stream), ...sinks.flatMap((s) => ['--sink', s])]);

    // A key typo: every output would have been dead-lettered (no valid key), the run exiting 0.
    const wrongKey = run(`page-view-counts=dynamodb:${table}?key=pgae,windowStart`);
    expect(wrongKey.code).toBe(1);
    expect(wrongKey.stderr.trim()).toBe(
      `floe: --sink "page-view-counts=dynamodb:${table}?key=pgae,windowStart": table "${table}" has the key page (partition key), windowStart (sort key), but the binding names ?key=pgae,windowStart; pass ?key=page,windowStart (fields of the sink's values)`,
    );
    // Missing destinations: the run used to process and commit, then fail at the first publish.
    const missing = run(
      `page-view-counts=dynamodb:${table}-typo?key=page,windowStart`,
      `late-page-views=kinesis:${stream}-typo`,
      `floe.dead-letter=s3:${job}-typo/dead/`,
    );
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim()).toBe(
      `floe: missing sink destination DynamoDB table "${table}-typo" (sink page-view-counts), Kinesis stream "${stream}-typo" (sink late-page-views), S3 bucket "${job}-typo" (sink floe.dead-letter) in region us-east-1: create them, or fix the --sink bindings`,
    );
    const replay = floe([
      'replay',
      '--from-timestamp',
      '2026-01-01',
      '--pipeline',
      'examples/page-views.ts',
      '--job',
      job,
      '--stream',
      stream,
      '--backend',
      'aws',
      '--restore-only',
      '--sink',
      `late-page-views=kinesis:${stream}-typo`,
    ]);
    expect(replay.code).toBe(1);
    expect(replay.stderr).toMatch(/^floe: missing sink destination Kinesis stream/);
    // Nothing was processed or recorded: no checkpoint, no job record.
    const status = floe(['status', '--backend', 'aws', '--job', job, '--stream', stream, '--json']);
    expect(status.code).toBe(0);
    const parsed = JSON.parse(status.stdout) as {
      record?: unknown;
      shards: Array<{ checkpointed: boolean }>;
    };
    expect(parsed.record).toBeUndefined();
    expect(parsed.shards.map((s) => s.checkpointed)).toEqual([false, false]);

    // The order of ?key= does not matter; with the right bindings the job runs.
    const ok = run(
      `page-view-counts=dynamodb:${table}?key=windowStart,page`,
      `late-page-views=kinesis:${stream}`,
    );
    expect(ok.stderr).toMatch(/processed 300 records/);
    expect(ok.code).toBe(0);
  });

  it('without --stream, a job runs on the stream its job record names', async () => {
    const job = uniqueName('again');
    const stream = uniqueName('clicks');
    await createStream(clients.kinesis, stream, 2);
    await putSamplePageViews(clients.kinesis, stream);
    expect(floe(samplePageViewsRunArgs(job, stream)).code).toBe(0);
    const again = floe(['run', 'examples/page-views.ts', '--backend', 'aws', '--job', job, '--until-idle']);
    expect(again.stderr).toMatch(new RegExp(`job "${job}" processed 0 records from ${stream} `));
    expect(again.code).toBe(0);
  });
});
