/**
 * The functions' synthesized IAM policies against an emulator that enforces IAM: a missing grant
 * fails here instead of on a user's first deploy (the shared moto_server does not enforce IAM, so
 * every other infra test passes whatever the policies say).
 *
 * A moto_server of this file's own runs through env/moto-iam-server.py, which makes moto check
 * each DynamoDB and Kinesis call against its table's or stream's ARN, and each action of a
 * TransactWriteItems as its single-item action, as AWS does (moto 5.2.1 alone checks those
 * services against the resource "*" only, and a transaction as `dynamodb:TransactWriteItems`); S3
 * calls are checked against the bucket and object ARNs by moto itself. Conditions are not
 * evaluated, and KMS, CloudWatch Logs and Lambda are not involved (no key; the handlers' logs go to
 * stdout; the coordinator's worker invocation is replaced).
 *
 * The StreamProcessor is synthesized for the test's resources (an imported stream, the page-views
 * pipeline with its counts in a SinkTarget.newTable table); each function role's policy, its
 * construct references resolved to the resources created here, becomes the inline policy of an
 * IAM user, and each handler runs with that user's keys and the environment the construct gives
 * the function. Then one needed action is removed from the worker's policy: the same round fails
 * with AccessDenied, so the test can fail.
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { CreateTableCommand, DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import { KinesisClient } from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { AttributeType } from 'aws-cdk-lib/aws-dynamodb';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { SinkTarget } from '../../cdk/sink-target.ts';
import { StreamProcessor } from '../../cdk/stream-processor.ts';
import { testApp } from '../../cdk/test-support.ts';
import pageViews from '../../examples/page-views.ts';
import { type AwsClientsBundle, type AwsJobConfig, awsJobConfigFromEnv } from '../../lib/aws/job.ts';
import { putRecords } from '../../lib/aws/kinesis-source.ts';
import { createCoordinatorHandler, createWorkerHandler } from '../../lib/aws/lambda-handlers.ts';
import { createBucket, createStream, createTables } from '../../lib/aws/resources.ts';
import { createSavepointHandler } from '../../lib/aws/savepoint-handler.ts';
import { MANIFEST_FILE } from '../../lib/core/index.ts';
import { clickstream } from '../../lib/runtime/clickstream.ts';
import type { WorkerResult } from '../../lib/runtime/worker.ts';
import { setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { startOwnMotoServer } from '../env/local-emulators.ts';
import { isolateMotoTransactions } from './moto-transactions.ts';
import { readObjects } from './s3-objects.ts';

const env = await setupAwsTestEnv();
const ACCOUNT = '123456789012'; // moto's default account
const REGION = 'us-east-1';
const JOB = 'iam-page-views';
const SHARD = 'shardId-000000000000';
const REPO_ROOT = new URL('../..', import.meta.url).pathname;
const WRAPPER = new URL('../env/moto-iam-server.py', import.meta.url).pathname;

type Json = Record<string, unknown>;
interface Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

/** What the construct's logical ids (by prefix) stand for here: a name (Ref) and an ARN. */
type Resources = ReadonlyArray<readonly [prefix: string, ref: string, arn: string]>;

/** One fixture's resources: the construct's tables and bucket, created for it. */
interface Fixture {
  readonly stateTable: string;
  readonly controlTable: string;
  readonly sinkTable: string;
  readonly bucket: string;
}

// ---- The synthesized construct --------------------------------------------------------------

const stream = uniqueName('iam-views');
const template = (() => {
  const stack = new Stack(testApp(), 'Iam', { env: { account: ACCOUNT, region: REGION } });
  new StreamProcessor(stack, 'Job', {
    pipeline: 'examples/page-views.ts',
    job: JOB,
    stream: kinesis.Stream.fromStreamArn(
      stack,
      'Source',
      `arn:aws:kinesis:${REGION}:${ACCOUNT}:stream/${stream}`,
    ),
    sinks: {
      'page-view-counts': SinkTarget.newTable({
        partitionKey: { name: 'page', type: AttributeType.STRING },
        sortKey: { name: 'windowStart', type: AttributeType.NUMBER },
      }),
    },
  });
  return Template.fromStack(stack);
})();

function resourcesOf(f: Fixture): Resources {
  const table = (name: string) => `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${name}`;
  const logs = (name: string) => `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:${name}:*`;
  return [
    ['JobStateTable', f.stateTable, table(f.stateTable)],
    ['JobControlTable', f.controlTable, table(f.controlTable)],
    ['JobSinkspageviewcountsTable', f.sinkTable, table(f.sinkTable)],
    ['JobBucket', f.bucket, `arn:aws:s3:::${f.bucket}`],
    ['JobWorkerLogs', 'worker-logs', logs('worker-logs')],
    ['JobCoordinatorLogs', 'coordinator-logs', logs('coordinator-logs')],
    ['JobSavepointLogs', 'savepoint-logs', logs('savepoint-logs')],
    ['JobWorker', 'worker', `arn:aws:lambda:${REGION}:${ACCOUNT}:function:worker`],
  ];
}

/** A template value with its Ref, Fn::GetAtt (Arn) and Fn::Join resolved against `resources`. */
function resolve(node: unknown, resources: Resources): unknown {
  if (typeof node === 'string' || typeof node === 'number' || typeof node === 'boolean') return node;
  if (Array.isArray(node)) return node.map((n) => resolve(n, resources));
  const o = node as Json;
  const find = (id: string) => {
    const found = resources.find(
      ([prefix]) => id.startsWith(prefix) && /^[0-9A-F]{8}$/.test(id.slice(prefix.length)),
    );
    if (found === undefined) throw new Error(`no resource here for the construct's ${id}`);
    return found;
  };
  if (typeof o.Ref === 'string') {
    const pseudo: Record<string, string> = {
      'AWS::Partition': 'aws',
      'AWS::Region': REGION,
      'AWS::AccountId': ACCOUNT,
      'AWS::URLSuffix': 'amazonaws.com',
    };
    return pseudo[o.Ref] ?? find(o.Ref)[1];
  }
  if (Array.isArray(o['Fn::GetAtt'])) {
    const [id, attribute] = o['Fn::GetAtt'] as [string, string];
    if (attribute !== 'Arn') throw new Error(`unexpected Fn::GetAtt ${id}.${attribute}`);
    return find(id)[2];
  }
  if (Array.isArray(o['Fn::Join'])) {
    const [delimiter, parts] = o['Fn::Join'] as [string, unknown[]];
    return parts.map((p) => resolve(p, resources)).join(delimiter);
  }
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, resolve(v, resources)]));
}

/** The policy document of role `role` (logical id prefix, e.g. 'JobWorkerRole'), resolved. */
function policyOf(role: string, resources: Resources): { Version: string; Statement: Json[] } {
  const entry = Object.entries(template.findResources('AWS::IAM::Policy')).find(([id]) =>
    id.startsWith(`${role}DefaultPolicy`),
  );
  if (entry === undefined) throw new Error(`no policy of ${role}`);
  const document = (entry[1] as { Properties: { PolicyDocument: Json } }).Properties.PolicyDocument;
  return resolve(document, resources) as { Version: string; Statement: Json[] };
}

/** The job configuration a function gets from the environment the construct gives it. */
function configOf(fn: 'JobWorker' | 'JobCoordinator' | 'JobSavepoint', resources: Resources): AwsJobConfig {
  const entry = Object.entries(template.findResources('AWS::Lambda::Function')).find(
    ([id]) => id.startsWith(fn) && /^[0-9A-F]{8}$/.test(id.slice(fn.length)),
  );
  if (entry === undefined) throw new Error(`no function ${fn}`);
  const variables = (entry[1] as { Properties: { Environment: { Variables: Json } } }).Properties.Environment
    .Variables;
  return awsJobConfigFromEnv(resolve(variables, resources) as NodeJS.ProcessEnv);
}

// ---- moto with IAM enforced -----------------------------------------------------------------

let moto: { url: string; stop(): Promise<void> } | undefined;
let admin: AwsClientsBundle | undefined;
const fixtures: Fixture[] = [];

/** An IAM query API call to moto; before reset-auth, moto checks no signature. */
async function iam(params: Record<string, string>): Promise<string> {
  const res = await fetch(moto!.url, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/x-www-form-urlencoded',
      Authorization: `AWS4-HMAC-SHA256 Credential=test/20260101/${REGION}/iam/aws4_request, SignedHeaders=host, Signature=0`,
    },
    body: new URLSearchParams({ Version: '2010-05-08', ...params }),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`IAM ${params.Action}: ${res.status} ${text}`);
  return text;
}

/** A user whose only permissions are `policy`; returns its access key. */
async function userWith(name: string, policy: unknown): Promise<Credentials> {
  await iam({ Action: 'CreateUser', UserName: name });
  await iam({
    Action: 'PutUserPolicy',
    UserName: name,
    PolicyName: 'policy',
    PolicyDocument: JSON.stringify(policy),
  });
  const created = await iam({ Action: 'CreateAccessKey', UserName: name });
  const field = (tag: string) => {
    const value = new RegExp(`<${tag}>([^<]+)</${tag}>`).exec(created)?.[1];
    if (value === undefined) throw new Error(`no ${tag} in ${created}`);
    return value;
  };
  return { accessKeyId: field('AccessKeyId'), secretAccessKey: field('SecretAccessKey') };
}

/** Clients of the own moto with `credentials` (dummy ones before auth is on). */
function clientsAs(credentials: Credentials): AwsClientsBundle {
  const base = () => ({
    region: REGION,
    endpoint: moto!.url,
    credentials: { ...credentials },
    requestHandler: new NodeHttpHandler({ connectionTimeout: 5_000, requestTimeout: 30_000 }),
  });
  const kinesisClient = new KinesisClient(base());
  const dynamodb = new DynamoDBClient(base());
  isolateMotoTransactions(dynamodb);
  const s3 = new S3Client({ ...base(), forcePathStyle: true });
  return {
    kinesis: kinesisClient,
    dynamodb,
    s3,
    destroy() {
      kinesisClient.destroy();
      dynamodb.destroy();
      s3.destroy();
    },
  };
}

async function createFixture(clients: AwsClientsBundle, n: number): Promise<Fixture> {
  const f: Fixture = {
    stateTable: uniqueName(`iam-state-${n}`),
    controlTable: uniqueName(`iam-control-${n}`),
    sinkTable: uniqueName(`iam-counts-${n}`),
    bucket: uniqueName(`iam-bucket-${n}`),
  };
  await createTables(clients.dynamodb, f.stateTable, f.controlTable);
  await clients.dynamodb.send(
    new CreateTableCommand({
      TableName: f.sinkTable,
      BillingMode: 'PAY_PER_REQUEST',
      AttributeDefinitions: [
        { AttributeName: 'page', AttributeType: 'S' },
        { AttributeName: 'windowStart', AttributeType: 'N' },
      ],
      KeySchema: [
        { AttributeName: 'page', KeyType: 'HASH' },
        { AttributeName: 'windowStart', KeyType: 'RANGE' },
      ],
    }),
  );
  await createBucket(clients.s3, f.bucket);
  fixtures.push(f);
  return f;
}

function quietMetrics(logger: Logger): Metrics {
  vi.stubEnv('POWERTOOLS_METRICS_DISABLED', 'true');
  try {
    return new Metrics({ namespace: 'FloeTest', serviceName: 'floe-worker', logger });
  } finally {
    vi.unstubAllEnvs();
  }
}

const logger = new Logger({ serviceName: 'floe-iam-test', logLevel: 'SILENT' });

/** Worker invocations of the shard (3 s each) until it is caught up, as the coordinator would. */
async function workerRound(config: AwsJobConfig, credentials: Credentials): Promise<WorkerResult[]> {
  const handler = createWorkerHandler({
    loadPipeline: async () => pageViews,
    config: () => config,
    clients: () => clientsAs(credentials),
    logger,
    metrics: quietMetrics(logger),
  });
  const results: WorkerResult[] = [];
  do {
    results.push(
      await handler(
        { shardId: SHARD },
        { awsRequestId: `iam-${Date.now()}-${results.length}`, getRemainingTimeInMillis: () => 13_000 },
      ),
    );
  } while (!results.at(-1)!.caughtUp && results.length < 8);
  return results;
}

const withoutAction = (
  policy: { Version: string; Statement: Json[] },
  action: string,
  resource: string,
): { Version: string; Statement: Json[] } => ({
  ...policy,
  Statement: policy.Statement.map((s) =>
    JSON.stringify(s.Resource).includes(resource)
      ? { ...s, Action: [s.Action].flat().filter((a) => a !== action) }
      : s,
  ).filter((s) => (s.Action as string[]).length > 0),
});

// A few hundred pages: the first read's commit changes more keys than a transaction holds, so it
// goes through the S3 delta path (PutObject under <job>/, the commit point, conditional PutItems,
// the outbox transaction with its ConditionCheck); 150 s of event time fire the first windows.
const VIEWS = [...clickstream({ events: 3_000, pages: 300, users: 500, rate: 20, seed: 11 })];

describe.skipIf(env.engines.dynamodb !== 'moto')('the synthesized policies on moto with IAM enforced', () => {
  let ok: Fixture;
  let denied: Fixture;
  let adminKey: Credentials;

  beforeAll(async () => {
    moto = await startOwnMotoServer(REPO_ROOT, WRAPPER);
    // Set-up with moto's default of no enforcement (INITIAL_NO_AUTH_ACTION_COUNT unset).
    admin = clientsAs({ accessKeyId: 'test', secretAccessKey: 'test' });
    await createStream(admin.kinesis, stream, 1);
    await putRecords(
      admin.kinesis,
      stream,
      VIEWS.map((v) => ({ partitionKey: v.page, data: JSON.stringify(v) })),
    );
    ok = await createFixture(admin, 0);
    denied = await createFixture(admin, 1);
    adminKey = await userWith('admin', {
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }],
    });
    admin.destroy();
    admin = undefined;
  }, 120_000);

  afterAll(async () => {
    admin?.destroy();
    await moto?.stop();
  });

  /** From here on moto checks every request's signature and permissions. */
  const enforce = async () => {
    const res = await fetch(`${moto!.url}/moto-api/reset-auth`, { method: 'POST', body: '0' });
    expect(res.ok).toBe(true);
  };

  it('the worker, coordinator and savepoint roles cover their calls; without one action the worker round fails', async () => {
    const resources = resourcesOf(ok);
    const workerKey = await userWith('worker', policyOf('JobWorkerRole', resources));
    const coordinatorKey = await userWith('coordinator', policyOf('JobCoordinatorRole', resources));
    const savepointKey = await userWith('savepoint', policyOf('JobSavepointRole', resources));
    const deniedResources = resourcesOf(denied);
    // The state table's PutItem: a delta's conditional puts (the control table keeps its own).
    const stateTableArn = `table/${denied.stateTable}`;
    const workerPolicy = policyOf('JobWorkerRole', deniedResources);
    expect(JSON.stringify(workerPolicy)).toContain(stateTableArn);
    const crippledKey = await userWith(
      'worker-without-state-put',
      withoutAction(workerPolicy, 'dynamodb:PutItem', stateTableArn),
    );
    await enforce();

    // An admin's key works, dummy keys no longer do: enforcement is on.
    const stranger = clientsAs({ accessKeyId: 'test', secretAccessKey: 'test' });
    await expect(readObjects(stranger.s3, ok.bucket)).rejects.toThrow();
    stranger.destroy();
    admin = clientsAs(adminKey);

    // The worker: reads the shard, commits through S3 deltas, publishes to the sink table.
    const results = await workerRound(configOf('JobWorker', resources), workerKey);
    expect(results.reduce((n, r) => n + r.records, 0)).toBe(VIEWS.length);
    expect(results.reduce((n, r) => n + r.commits, 0)).toBeGreaterThan(0);
    expect(results.at(-1)!.caughtUp).toBe(true);
    const deltas = await readObjects(admin.s3, ok.bucket, `${JOB}/0/deltas/`);
    expect(deltas.size).toBeGreaterThan(0); // the S3 delta path ran
    const counts = await admin.dynamodb.send(new ScanCommand({ TableName: ok.sinkTable }));
    expect(counts.Count).toBeGreaterThan(0); // and the sink table got the first windows' counts
    // An output its sink refuses is dead-lettered, not raised: none was.
    expect((await readObjects(admin.s3, ok.bucket, 'dead-letters/')).size).toBe(0);

    // The coordinator: lists the shards, reads checkpoints and leases, starts the shard's worker
    // (the Lambda invocation is replaced: moto's Lambda would need Docker).
    const started: string[] = [];
    const coordinator = createCoordinatorHandler({
      loadPipeline: async () => pageViews,
      config: () => configOf('JobCoordinator', resources),
      clients: () => clientsAs(coordinatorKey),
      logger,
      startWorker: async ({ shardId }) => {
        started.push(shardId);
      },
    });
    const round = await coordinator();
    expect(round.started).toEqual([SHARD]);
    expect(started).toEqual([SHARD]);

    // The savepoint function: pauses the job, takes the lease, exports state and checkpoints to
    // savepoints/ (and reads the record after the saved position), resumes the job.
    const savepoint = createSavepointHandler({
      loadPipeline: async () => pageViews,
      config: () => configOf('JobSavepoint', resources),
      clients: () => clientsAs(savepointKey),
      logger,
    });
    const taken = await savepoint({}, { getRemainingTimeInMillis: () => 120_000 });
    expect(taken.entries).toBeGreaterThan(0);
    expect(taken.location).toBe(`s3://${ok.bucket}/savepoints/${taken.id}/`);
    const files = await readObjects(admin.s3, ok.bucket, `savepoints/${taken.id}/`);
    expect([...files.keys()]).toContain(`savepoints/${taken.id}/${MANIFEST_FILE}`);

    // The same round without the state table's PutItem fails with AccessDenied.
    const failure = await workerRound(configOf('JobWorker', deniedResources), crippledKey).then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    expect(failure).toBeDefined();
    expect(`${failure!.name}: ${failure!.message}`).toContain(
      `AccessDeniedException: User: arn:aws:iam::${ACCOUNT}:user/worker-without-state-put is not authorized to perform: dynamodb:PutItem on resource: arn:aws:dynamodb:${REGION}:${ACCOUNT}:${stateTableArn}`,
    );
  }, 180_000);
});
