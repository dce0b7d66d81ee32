/**
 * `floe run --backend aws` while a sink keeps failing transiently: the runner retries the shard
 * every round, and says why. Before, it passed no onLeaseBusy to runJob: the run went on retrying
 * without a word (with --until-idle, forever). The failure is injected by a proxy in front of the
 * Kinesis emulator that answers the sink's PutRecords with a 500 (the emulators never fail so).
 */
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, expect, it } from 'vitest';
import { createStream } from '../../lib/aws/resources.ts';
import { putSamplePageViews, samplePageViewsRunArgs } from '../aws/sample-page-views.ts';
import { awsClients, awsProcessEnv, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';

const env = await setupAwsTestEnv();
const clients = awsClients(env);
afterAll(() => clients.destroy());

/** Forwards to `target`, but answers every PutRecords with a 500 InternalFailure. */
async function failingPutRecordsProxy(target: string): Promise<{ url: string; close(): void }> {
  const upstream = new URL(target);
  const server = http.createServer((req, res) => {
    if (String(req.headers['x-amz-target']).endsWith('.PutRecords')) {
      req.resume();
      res.writeHead(500, { 'content-type': 'application/x-amz-json-1.1' });
      res.end(JSON.stringify({ __type: 'InternalFailure', message: 'injected by the test proxy' }));
      return;
    }
    const forward = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        path: req.url,
        method: req.method,
        headers: req.headers,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

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
