/**
 * `floe run --backend aws` while a sink keeps failing transiently: the runner retries the shard
 * every round, and says why. Before, it passed no onLeaseBusy to runJob: the run went on retrying
 * without a word (with --until-idle, forever). The failure is injected by a proxy in front of the
 * Kinesis emulator that answers the sink's PutRecords with a 500 (the emulators never fail so).
 */
import { spawn } from 'node:child_process';
import { afterAll, expect, it } from 'vitest';
import { createStream } from '../../lib/aws/resources.ts';
import { putSamplePageViews, samplePageViewsRunArgs } from '../aws/sample-page-views.ts';
import { awsClients, awsProcessEnv, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { startRequestLog } from '../env/request-log.ts';

const env = await setupAwsTestEnv();
const clients = awsClients(env);
afterAll(() => clients.destroy());

/** Forwards to `target`, but answers every PutRecords with a 500 InternalFailure. */
const failingPutRecordsProxy = (target: string) =>
  startRequestLog(target, {
    answer: (operation) =>
      operation === 'PutRecords'
        ? { status: 500, body: { __type: 'InternalFailure', message: 'injected by the test proxy' } }
        : undefined,
  });

it.skipIf(!env.endpoints.kinesis?.startsWith('http://'))(
  'says which shard and why while a sink keeps failing transiently',
  async () => {
    const job = uniqueName('pv');
    const stream = uniqueName('clicks');
    const alerts = uniqueName('alerts');
    await Promise.all([createStream(clients.kinesis, stream, 1), createStream(clients.kinesis, alerts, 1)]);
    await putSamplePageViews(clients.kinesis, stream);
    const proxy = await failingPutRecordsProxy(env.endpoints.kinesis!);
    const child = spawn(
      process.execPath,
      ['bin/floe.js', ...samplePageViewsRunArgs(job, stream), '--sink', `page-view-counts=kinesis:${alerts}`],
      { env: { ...process.env, ...awsProcessEnv(env), AWS_ENDPOINT_URL_KINESIS: proxy.url } },
    );
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += String(chunk);
    });
    try {
      const said = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), 60_000);
        child.stderr.on('data', () => {
          if (/PutRecords/.test(stderr)) {
            clearTimeout(timer);
            resolve(true);
          }
        });
        child.on('exit', () => resolve(/PutRecords/.test(stderr)));
      });
      expect(said, `stderr: ${stderr}`).toBe(true);
      expect(stderr).toMatch(/shardId-000000000000: .*PutRecords to Kinesis stream .*; retrying/);
    } finally {
      child.kill();
      proxy.close();
    }
  },
  90_000,
);
