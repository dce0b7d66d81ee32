/**
 * `cdk deploy --method=direct` of the example app (cdk/app.ts) into the emulator, then the
 * deployed functions' bundles run here, against the deployed stream, tables and bucket:
 *
 *   1. `cdk bootstrap` and `cdk deploy --method=direct` against a `localhost` CloudFormation
 *      endpoint: moto_server (or LocalStack). moto creates every resource of the template in its
 *      own backends, including the Kinesis stream (in moto's Kinesis, not kinesis-local: one
 *      moto process serves every service, and CloudFormation can only create resources there).
 *      The stream is therefore used where the stack created it; moto's Kinesis is fine for a
 *      stream that is not resharded (resharding is what the other infra tests use kinesis-local
 *      for). Resource types moto's CloudFormation lacks (alarms, bucket policies, the async
 *      invoke config) are skipped by moto; the template tests in cdk/ cover them.
 *   2. Clicks are produced into the deployed stream in two rounds. Each round invokes the
 *      coordinator's bundle (the code deployed to Lambda, from the cloud assembly) with the
 *      deployed coordinator's environment; its Invoke calls go to a local stand-in for the
 *      Lambda API, which runs the worker's bundle with the deployed worker's environment.
 *   3. The deployed sinks must hold exactly what the pipeline computes in memory over the same
 *      records (`simulate`): the window counts in the DynamoDB sink table, late views and the
 *      dead letter as NDJSON in the bucket; the worker's embedded metrics count every record.
 *
 * Skipped when there is no local CloudFormation endpoint (real AWS is never deployed to).
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KinesisClient, ListShardsCommand, PutRecordsCommand } from '@aws-sdk/client-kinesis';
import { GetFunctionConfigurationCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient, ScanCommand } from '@aws-sdk/lib-dynamodb';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import type { Output } from '../../lib/core/index.ts';
import { clickstream } from '../../lib/runtime/clickstream.ts';
import { simulate } from '../../lib/runtime/simulate.ts';
import { type AwsTestEnv, DUMMY_CREDENTIALS, setupAwsTestEnv } from '../env/aws-clients.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CDK_CLI = join(ROOT, 'node_modules/aws-cdk/bin/cdk');

const env = await setupAwsTestEnv();

/**
 * The CloudFormation endpoint to deploy to, as a `localhost` URL (moto resolves a TemplateURL on
 * its own S3 only for localhost URLs), or undefined: never a remote endpoint or real AWS.
 */
function cloudFormationEndpoint(e: AwsTestEnv): string | undefined {
  const explicit =
    process.env.AWS_ENDPOINT_URL_CLOUDFORMATION ??
    (e.kind === 'env' ? process.env.AWS_ENDPOINT_URL : undefined);
  const candidate =
    explicit ??
    (e.engines.dynamodb === 'moto' || e.engines.dynamodb === 'localstack' ? e.endpoints.dynamodb : undefined);
  if (candidate === undefined) return undefined;
  const url = new URL(candidate);
  if (!['localhost', '127.0.0.1', '[::1]'].includes(url.hostname)) return undefined;
  url.hostname = 'localhost';
  return url.origin;
}

const endpoint = cloudFormationEndpoint(env);

interface Invocation {
  readonly functionName: string;
  readonly invocationType: string | undefined;
  readonly payload: unknown;
}

/** A stand-in for the Lambda Invoke API: records each call and answers 202 (asynchronous). */
async function fakeLambda(): Promise<{ url: string; invocations: Invocation[]; server: Server }> {
  const invocations: Invocation[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const match = /^\/2015-03-31\/functions\/([^/]+)\/invocations/.exec(req.url ?? '');
      if (req.method !== 'POST' || match === null) {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"message":"not found"}');
        return;
      }
      invocations.push({
        functionName: decodeURIComponent(match[1]!),
        invocationType: req.headers['x-amz-invocation-type'] as string | undefined,
        payload: JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null'),
      });
      res.writeHead(202, { 'content-type': 'application/json' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, invocations, server };
}

/** Runs the CDK CLI; resolves with its output, rejects with it on failure. */
function cdk(args: string[], childEnv: NodeJS.ProcessEnv, cwd = ROOT, timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CDK_CLI, ...args], { cwd, env: childEnv, stdio: 'pipe' });
    let output = '';
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(output);
      else reject(new Error(`cdk ${args.join(' ')} exited with ${code}:\n${output.slice(-4000)}`));
    });
  });
}

type Handler = (event: unknown, context: unknown) => Promise<unknown>;

describe.skipIf(endpoint === undefined)('cdk deploy of the example app into the emulator', () => {
  const stackName = `FloeDeployTest${Date.now().toString(36)}`;
  const outdir = mkdtempSync(join(tmpdir(), 'floe-cdk-deploy-'));
  const credentials = {
    accessKeyId: DUMMY_CREDENTIALS.accessKeyId,
    secretAccessKey: DUMMY_CREDENTIALS.secretAccessKey,
  };
  const clientConfig = { endpoint: endpoint!, region: env.region, credentials };
  const awsEnv = {
    AWS_ENDPOINT_URL: endpoint!,
    AWS_REGION: env.region,
    AWS_ACCESS_KEY_ID: credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
  let outputs: Record<string, string>;
  let lambda: Awaited<ReturnType<typeof fakeLambda>>;
  const timings: Record<string, number> = {};
  const savedEnv = { ...process.env };

  beforeAll(async () => {
    lambda = await fakeLambda();
    const childEnv: NodeJS.ProcessEnv = {
      ...process.env,
      ...awsEnv,
      CDK_DISABLE_CLI_TELEMETRY: 'true',
      CI: 'true',
    };
    for (const key of Object.keys(childEnv)) {
      if (key.startsWith('AWS_ENDPOINT_URL_') || key === 'AWS_PROFILE') delete childEnv[key];
    }
    let t = Date.now();
    // Outside the app's directory, so bootstrap does not synthesize the app first.
    await cdk(['bootstrap', `aws://unknown-account/${env.region}`, '--no-notices'], childEnv, outdir);
    timings.bootstrapMs = Date.now() - t;
    t = Date.now();
    await cdk(
      [
        'deploy',
        stackName,
        '--method=direct',
        '--require-approval=never',
        '--no-notices',
        '--progress=events',
        `--output=${join(outdir, 'cdk.out')}`,
        `--outputs-file=${join(outdir, 'outputs.json')}`,
        '-c',
        `floe:stackName=${stackName}`,
        '-c',
        'floe:removalPolicy=destroy',
      ],
      childEnv,
    );
    timings.deployMs = Date.now() - t;
    outputs = (
      JSON.parse(readFileSync(join(outdir, 'outputs.json'), 'utf8')) as Record<string, Record<string, string>>
    )[stackName]!;
  }, 600_000);

  afterAll(async () => {
    process.env = savedEnv;
    await new Promise((resolve) => lambda?.server.close(resolve));
    rmSync(outdir, { recursive: true, force: true });
    console.info(`[cdk deploy test] ${JSON.stringify(timings)}`);
  });

  /** The bundle a function of the deployed template runs (from the cloud assembly). */
  async function bundledHandler(logicalIdPrefix: string): Promise<Handler> {
    const template = JSON.parse(
      readFileSync(join(outdir, 'cdk.out', `${stackName}.template.json`), 'utf8'),
    ) as {
      Resources: Record<string, { Type: string; Metadata?: Record<string, string> }>;
    };
    const entry = Object.entries(template.Resources).find(
      ([id, r]) => r.Type === 'AWS::Lambda::Function' && id.startsWith(logicalIdPrefix),
    );
    const assetPath = entry?.[1].Metadata?.['aws:asset:path'];
    if (assetPath === undefined) throw new Error(`no bundled function ${logicalIdPrefix} in the template`);
    const module = (await import(pathToFileURL(join(outdir, 'cdk.out', assetPath, 'index.mjs')).href)) as {
      handler: Handler;
    };
    return module.handler;
  }

  /** The environment the deployed function has, read back from the (emulated) Lambda API. */
  async function deployedEnvironment(functionName: string): Promise<Record<string, string>> {
    const client = new LambdaClient(clientConfig);
    try {
      const config = await client.send(new GetFunctionConfigurationCommand({ FunctionName: functionName }));
      expect(config.Runtime).toBe('nodejs22.x');
      expect(config.Handler).toBe('index.handler');
      return config.Environment?.Variables ?? {};
    } finally {
      client.destroy();
    }
  }

  /** Makes process.env what the function sees in Lambda, with the endpoints of this test. */
  function useFunctionEnvironment(variables: Record<string, string>): void {
    const next: NodeJS.ProcessEnv = {
      ...savedEnv,
      ...variables,
      ...awsEnv,
      AWS_ENDPOINT_URL_LAMBDA: lambda.url,
    };
    for (const key of Object.keys(next)) {
      if (/^AWS_ENDPOINT_URL_(KINESIS|DYNAMODB|S3)$/.test(key)) delete next[key];
    }
    next.POWERTOOLS_LOG_LEVEL = 'WARN';
    process.env = next;
  }

  it('runs the deployed job: every produced event comes out in the deployed sinks exactly once', {
    timeout: 300_000,
  }, async () => {
    // The stack's outputs name real resources of the emulator.
    for (const key of [
      'StreamName',
      'StateTableName',
      'ControlTableName',
      'BucketName',
      'PageViewCountsTableName',
    ]) {
      expect(outputs[key], key).toMatch(/\S/);
    }
    expect(outputs.Job).toBe('page-views');
    const workerEnv = await deployedEnvironment(outputs.WorkerFunctionName!);
    const coordinatorEnv = await deployedEnvironment(outputs.CoordinatorFunctionName!);
    expect(workerEnv).toMatchObject({
      FLOE_JOB: 'page-views',
      FLOE_STREAM: outputs.StreamName,
      FLOE_STATE_TABLE: outputs.StateTableName,
      FLOE_CONTROL_TABLE: outputs.ControlTableName,
      FLOE_BUCKET: outputs.BucketName,
    });
    expect(workerEnv.FLOE_SINKS).toContain(`page-view-counts=dynamodb:${outputs.PageViewCountsTableName}`);
    expect(coordinatorEnv.FLOE_WORKER_FUNCTION).toBe(outputs.WorkerFunctionName);
    const worker = await bundledHandler('PageViewsWorker');
    const coordinator = await bundledHandler('PageViewsCoordinator');

    // The input: a deterministic clickstream with out-of-order and late clicks, one record
    // that is not JSON, and at the end one click per page far ahead so every window closes.
    const clicks = [...clickstream({ events: 3_000, pages: 12, users: 200, rate: 10, late: 0.02, seed: 7 })];
    const pages = [...new Set(clicks.map((c) => c.page))];
    const lastTs = Math.max(...clicks.map((c) => c.ts));
    type Rec = { partitionKey: string; text: string };
    const asRecord = (c: { page: string; user: string; ts: number }): Rec => ({
      partitionKey: c.page,
      text: JSON.stringify(c),
    });
    const round1: Rec[] = clicks.slice(0, 1_500).map(asRecord);
    const round2: Rec[] = [
      ...clicks.slice(1_500).map(asRecord),
      { partitionKey: '/', text: '{"page": "/", "user": "u1", "ts": oops}' },
      ...pages.map((page) => asRecord({ page, user: 'closer', ts: lastTs + 5 * 60_000 })),
    ];

    // What the pipeline computes over the same records, in memory, sharded the same way.
    const expected: Output[] = [];
    await simulate(
      pageViews,
      [...round1, ...round2].map((r) => JSON.stringify({ partitionKey: r.partitionKey, raw: r.text })),
      { shards: 2, onOutput: (o) => expected.push(o) },
    );
    const expectedCounts = new Map<string, unknown>();
    for (const o of expected) {
      if (o.sink !== 'page-view-counts') continue;
      const v = o.value as { page: string; windowStart: number };
      expectedCounts.set(`${v.page}@${v.windowStart}`, v); // an upsert keeps the last firing
    }
    const expectedLate = expected.filter((o) => o.sink === 'late-page-views').map((o) => o.value);
    const expectedDead = expected.filter((o) => o.sink === 'floe.dead-letter');
    expect(expectedCounts.size).toBeGreaterThan(20);
    expect(expectedLate.length).toBeGreaterThan(0);
    expect(expectedDead).toHaveLength(1);

    const kinesis = new KinesisClient({ ...clientConfig, requestHandler: new NodeHttpHandler() });
    const produce = async (records: Rec[]): Promise<void> => {
      for (let i = 0; i < records.length; i += 500) {
        const res = await kinesis.send(
          new PutRecordsCommand({
            StreamName: outputs.StreamName,
            Records: records.slice(i, i + 500).map((r) => ({
              PartitionKey: r.partitionKey,
              Data: new TextEncoder().encode(r.text),
            })),
          }),
        );
        expect(res.FailedRecordCount ?? 0).toBe(0);
      }
    };
    const shards = await kinesis.send(new ListShardsCommand({ StreamName: outputs.StreamName }));
    expect(shards.Shards).toHaveLength(2);

    // Capture stdout: the worker's embedded metrics (and logs) are written there.
    const lines: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      lines.push(...String(chunk).split('\n'));
      return true;
    });

    /** One coordinator round, then the workers it started (concurrently, 4 s each). */
    const round = async (): Promise<unknown> => {
      lambda.invocations.length = 0;
      useFunctionEnvironment(coordinatorEnv);
      const started = (await coordinator({}, { awsRequestId: randomUUID() })) as { started: string[] };
      expect(lambda.invocations.map((i) => i.functionName)).toEqual(
        started.started.map(() => outputs.WorkerFunctionName),
      );
      expect(lambda.invocations.every((i) => i.invocationType === 'Event')).toBe(true);
      useFunctionEnvironment(workerEnv);
      return Promise.all(
        lambda.invocations.map((i) =>
          worker(i.payload, { awsRequestId: randomUUID(), getRemainingTimeInMillis: () => 14_000 }),
        ),
      );
    };

    /** Rounds until the workers have processed `total` records (each round is one schedule tick). */
    let processed = 0;
    const runUntil = async (total: number): Promise<void> => {
      for (let i = 0; i < 5 && processed < total; i++) {
        const results = (await round()) as Array<{ records: number }>;
        expect(results).toHaveLength(2); // one worker per shard
        processed += results.reduce((n, r) => n + r.records, 0);
      }
    };
    let t = Date.now();
    try {
      await produce(round1);
      await runUntil(round1.length);
      await produce(round2);
      await runUntil(round1.length + round2.length);
    } finally {
      write.mockRestore();
      process.env = savedEnv;
    }
    // Each record was processed exactly once across invocations (no record counted twice).
    expect(processed).toBe(round1.length + round2.length);
    timings.runMs = Date.now() - t;
    t = Date.now();

    // The DynamoDB sink: exactly the final count of every fired window.
    const ddb = DynamoDBDocumentClient.from(new DynamoDBClient(clientConfig));
    const items: Record<string, unknown>[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await ddb.send(
        new ScanCommand({ TableName: outputs.PageViewCountsTableName, ExclusiveStartKey: start }),
      );
      items.push(...(page.Items ?? []));
      start = page.LastEvaluatedKey;
    } while (start !== undefined);
    // Each item also records the id of the output that wrote it last (the sink's idempotence key).
    // and its order among its job's outputs: generation and shard depth (rank), then shard,
    // commit and index (the condition that keeps a late publish from replacing a newer result).
    for (const item of items) {
      expect(item.floeOutputId).toMatch(/^page-views\/shardId-\d+\/\d+\/\d+$/);
      expect(item.floeOrder).toMatch(/^page-views\/shardId-\d+\/\d{16}\/\d{16}$/);
      expect(item.floeRank).toMatch(/^page-views\/\d{16}\/\d{16}$/);
    }
    const actualCounts = new Map(
      items.map(({ floeOutputId: _, floeOrder: _order, floeRank: _rank, ...value }) => [
        `${value.page}@${value.windowStart}`,
        value,
      ]),
    );
    expect(actualCounts.size).toBe(expectedCounts.size);
    for (const [key, value] of expectedCounts) expect(actualCounts.get(key), key).toEqual(value);

    // The bucket: late views under late/page-views/, the dead letter under dead-letters/page-views/.
    const s3 = new S3Client({ ...clientConfig, forcePathStyle: true });
    const values = async (prefix: string): Promise<unknown[]> => {
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: outputs.BucketName, Prefix: prefix }));
      const out: unknown[] = [];
      for (const object of listed.Contents ?? []) {
        const body = await s3.send(new GetObjectCommand({ Bucket: outputs.BucketName, Key: object.Key }));
        const text = (await body.Body?.transformToString()) ?? '';
        for (const line of text.split('\n').filter((l) => l.trim() !== '')) {
          out.push((JSON.parse(line) as { value: unknown }).value);
        }
      }
      return out;
    };
    const byJson = (a: unknown, b: unknown) => JSON.stringify(a).localeCompare(JSON.stringify(b));
    expect((await values('late/page-views/')).sort(byJson)).toEqual([...expectedLate].sort(byJson));
    const dead = (await values('dead-letters/page-views/')) as Array<{ reason: string; data: string }>;
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ reason: 'deserialize', data: '{"page": "/", "user": "u1", "ts": oops}' });
    // Nothing fell back to the unbound-sink prefix.
    expect(await values('outputs/')).toEqual([]);

    // The worker's embedded metrics (Powertools, EMF): every record, the late views, the dead letter.
    const emf = lines
      .filter((l) => l.startsWith('{') && l.includes('"_aws"'))
      .map(
        (l) =>
          JSON.parse(l) as Record<string, unknown> & { _aws: { CloudWatchMetrics: [{ Namespace: string }] } },
      );
    expect(emf.length).toBeGreaterThan(0);
    for (const m of emf) {
      expect(m._aws.CloudWatchMetrics[0].Namespace).toBe('Floe');
      expect(m.Job).toBe('page-views');
    }
    const sum = (name: string): number =>
      emf.reduce((n, m) => n + [m[name] ?? []].flat().reduce((a: number, b) => a + Number(b), 0), 0);
    expect(sum('RecordsIn')).toBe(round1.length + round2.length);
    expect(sum('LateRecords')).toBe(expectedLate.length);
    expect(sum('DeadLetters')).toBe(1);
    expect(sum('StateWrites')).toBeGreaterThan(0);
    expect(sum('Commits')).toBeGreaterThanOrEqual(2);
    expect(emf.some((m) => m.CommitLatency !== undefined)).toBe(true);
    expect(emf.some((m) => m.MillisBehindLatest !== undefined)).toBe(true);
    expect(emf.some((m) => m.WatermarkLag !== undefined)).toBe(true);

    kinesis.destroy();
    ddb.destroy();
    s3.destroy();
    timings.checkMs = Date.now() - t;
  });
});

if (endpoint === undefined) {
  describe('cdk deploy of the example app into the emulator', () => {
    it.skip(`needs a local CloudFormation endpoint (moto_server or LocalStack); this run has ${env.description}`, () => {});
  });
}
