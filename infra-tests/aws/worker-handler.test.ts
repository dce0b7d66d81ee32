/**
 * The Lambda worker handler (lib/aws/lambda-handlers.ts createWorkerHandler) on the emulators,
 * with warm tasks (lib/runtime/warm-tasks.ts): a warm container keeps each shard's task between
 * its invocations and goes on with it, reading no state entries again.
 *
 * Two jobs run examples/page-views.ts on the same 2-shard stream, each on its own tables, with
 * outputs in one bucket (`outputs/<job>/`, the S3 fallback sink: `sinks: []`):
 *
 * - "warm": one handler instance (one warm container) for every invocation;
 * - "cold": a new handler instance for every invocation (a fresh container each time).
 *
 * Page views are put in 3 stages; after each, both handlers are invoked per shard, with 1 s of
 * budget each (11 s remaining - the 10 s safety margin): an invocation processes the stage and
 * then polls the idle shard. On a loaded machine 1 s may end before the shard is caught up; the
 * shard is then invoked again (as the coordinator would), until caught up. Where the invocations
 * split a stage does not change the outputs: every read (up to 1,000 records) is one commit, and
 * an invocation that ends early resumes at the next read's records. Every invocation gets its own
 * clients (the handler destroys them), whose DynamoDB client counts the requests it sends per
 * operation and table (an SDK middleware).
 *
 * Expected: the warm handler's first invocation per shard starts cold and the later ones go on
 * with the kept task (`warm: true`) and send no BatchGetItem to the state table, while the cold
 * handler's later invocations that process records do read state; both jobs publish the same
 * outputs (ids normalised for the job id) and leave nothing unpublished.
 *
 * Idleness (1 minute of processing time) never fires: the run takes well under a minute from the
 * first put, so windows close by event time only, the same way in both jobs.
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import type { AwsJobConfig } from '../../lib/aws/job.ts';
import { putRecords } from '../../lib/aws/kinesis-source.ts';
import { createWorkerHandler } from '../../lib/aws/lambda-handlers.ts';
import { createBucket } from '../../lib/aws/resources.ts';
import { clickstream } from '../../lib/runtime/clickstream.ts';
import type { WorkerResult } from '../../lib/runtime/worker.ts';
import { type AwsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { createTestStream, deleteTestStream } from '../env/kinesis-streams.ts';
import { startRequestLog } from '../env/request-log.ts';
import { type BackendTables, createBackendTables } from './backend-tables.ts';
import { jobClients } from './job-clients.ts';
import { readObjects } from './s3-objects.ts';

const env = await setupAwsTestEnv();
let admin: AwsClients;
const bucket = uniqueName('floe-worker-handler');
let stream: string | undefined;
const tables: BackendTables[] = [];

beforeAll(async () => {
  admin = jobClients(env);
  await createBucket(admin.s3, bucket);
});
afterAll(async () => {
  if (admin === undefined) return;
  await Promise.all([
    ...(stream === undefined ? [] : [deleteTestStream(admin.kinesis, stream)]),
    ...tables.map((t) => t.close()),
  ]);
  admin.destroy();
});

const SHARDS = ['shardId-000000000000', 'shardId-000000000001'];
/**
 * Page views of 20 pages at 10 per second of event time (3,000: 5 minutes), in 3 stages. The
 * first stage has views of every page (the later ones have no page a warm task has not seen).
 */
const VIEWS = [...clickstream({ events: 3_000, pages: 20, users: 200, rate: 10, seed: 7 })];
const STAGES = [VIEWS.slice(0, 1_500), VIEWS.slice(1_500, 2_250), VIEWS.slice(2_250)];
/** The handler's budget is this minus SAFETY_MARGIN_MS (10 s): 1 s per invocation. */
const REMAINING_MS = 11_000;
/** Invocations of one shard per stage at most, until it is caught up. */
const MAX_INVOCATIONS = 5;

/**
 * DynamoDB requests of one invocation: `<operation> <table kind>` (state, control) -> requests
 * and the keys or items they name (BatchGetItem keys, TransactWriteItems actions, 1 otherwise);
 * a request naming both tables counts under each.
 */
type Requests = Map<string, { requests: number; keys: number }>;

interface Invocation {
  readonly stage: number;
  readonly shardId: string;
  readonly result: WorkerResult;
  readonly requests: Requests;
}

const count = (requests: Requests, key: string): { requests: number; keys: number } =>
  requests.get(key) ?? { requests: 0, keys: 0 };

/**
 * A clients factory for the handler: fresh clients per call (the handler destroys them after the
 * invocation) whose DynamoDB client counts its requests; `last()` is the latest call's count.
 */
function countingClients(tablesOfJob: BackendTables): { clients: () => AwsClients; last: () => Requests } {
  let current: Requests | undefined;
  const kind = (table: string): string =>
    table === tablesOfJob.stateTable ? 'state' : table === tablesOfJob.controlTable ? 'control' : table;
  return {
    clients: () => {
      const clients = jobClients(env);
      const requests: Requests = new Map();
      current = requests;
      clients.dynamodb.middlewareStack.add(
        (next) => async (args) => {
          const headers = (args.request as { headers?: Record<string, string> }).headers ?? {};
          const target = headers['x-amz-target'] ?? headers['X-Amz-Target'] ?? '?';
          const operation = target.slice(target.lastIndexOf('.') + 1);
          const input = args.input as {
            TableName?: string;
            RequestItems?: Record<string, { Keys?: unknown[] } | unknown[]>;
            TransactItems?: Array<Record<string, { TableName?: string }>>;
          };
          const perTable = new Map<string, number>();
          if (input.TableName !== undefined) perTable.set(input.TableName, 1);
          for (const [table, items] of Object.entries(input.RequestItems ?? {})) {
            perTable.set(table, Array.isArray(items) ? items.length : (items.Keys?.length ?? 0));
          }
          for (const action of input.TransactItems ?? []) {
            for (const { TableName } of Object.values(action)) {
              if (TableName !== undefined) perTable.set(TableName, (perTable.get(TableName) ?? 0) + 1);
            }
          }
          for (const [table, keys] of perTable) {
            const key = `${operation} ${kind(table)}`;
            const c = requests.get(key) ?? { requests: 0, keys: 0 };
            requests.set(key, { requests: c.requests + 1, keys: c.keys + keys });
          }
          return next(args);
        },
        // Inside the retry loop: every attempt is one HTTP request.
        { step: 'finalizeRequest', name: 'floeCountRequests', priority: 'low' },
      );
      return clients;
    },
    last: () => {
      if (current === undefined) throw new Error('the handler did not ask for clients');
      return current;
    },
  };
}

/** The job on tables `t`, reading `stream`, outputs to the bucket's S3 fallback sink. */
const jobConfig = (t: BackendTables): AwsJobConfig => ({
  job: t.job,
  stream: stream!,
  stateTable: t.stateTable,
  controlTable: t.controlTable,
  bucket,
  sinks: [],
});

/** Powertools Metrics that write nothing (POWERTOOLS_METRICS_DISABLED is read at construction). */
function quietMetrics(logger: Logger): Metrics {
  vi.stubEnv('POWERTOOLS_METRICS_DISABLED', 'true');
  try {
    return new Metrics({ namespace: 'FloeTest', serviceName: 'floe-worker', logger });
  } finally {
    vi.unstubAllEnvs();
  }
}

it('a warm worker container goes on with its shard tasks: no state reads, the same outputs as cold containers', async () => {
  const started = performance.now();
  // A page first seen after stage 0 would be read by a warm task too (its state is not cached).
  const pagesSeenFirst = new Set(STAGES[0]!.map((v) => v.page));
  expect(VIEWS.filter((v) => !pagesSeenFirst.has(v.page))).toEqual([]);
  stream = await createTestStream(admin.kinesis, 'worker-handler', SHARDS.length);
  const [warmTables, coldTables] = await Promise.all([
    createBackendTables(admin, bucket, 'wh-warm', 0),
    createBackendTables(admin, bucket, 'wh-cold', 0),
  ]);
  tables.push(warmTables, coldTables);
  const logger = new Logger({ serviceName: 'floe-worker', logLevel: 'SILENT' });
  const warmClients = countingClients(warmTables);
  const coldClients = countingClients(coldTables);
  const newHandler = (t: BackendTables, clients: ReturnType<typeof countingClients>) =>
    createWorkerHandler({
      loadPipeline: async () => pageViews,
      config: () => jobConfig(t),
      clients: clients.clients,
      logger,
      metrics: quietMetrics(logger),
    });
  const warmHandler = newHandler(warmTables, warmClients);

  let requestId = 0;
  const invoke = async (
    handler: ReturnType<typeof createWorkerHandler>,
    clients: ReturnType<typeof countingClients>,
    stage: number,
    shardId: string,
  ): Promise<Invocation> => {
    const result = await handler(
      { shardId },
      { awsRequestId: `req-${++requestId}-${Date.now()}`, getRemainingTimeInMillis: () => REMAINING_MS },
    );
    return { stage, shardId, result, requests: clients.last() };
  };
  const untilCaughtUp = async (next: () => Promise<Invocation>): Promise<Invocation[]> => {
    const invocations = [await next()];
    while (!invocations.at(-1)!.result.caughtUp && invocations.length < MAX_INVOCATIONS) {
      invocations.push(await next());
    }
    return invocations;
  };
  const warm: Invocation[] = [];
  const cold: Invocation[] = [];
  for (const [stage, views] of STAGES.entries()) {
    await putRecords(
      admin.kinesis,
      stream,
      views.map((v) => ({ partitionKey: v.page, data: JSON.stringify(v) })),
    );
    for (const shardId of SHARDS) {
      warm.push(...(await untilCaughtUp(() => invoke(warmHandler, warmClients, stage, shardId))));
      cold.push(
        ...(await untilCaughtUp(() =>
          invoke(newHandler(coldTables, coldClients), coldClients, stage, shardId),
        )),
      );
    }
  }
  const elapsedMs = performance.now() - started;

  const row = (i: Invocation) => ({
    stage: i.stage,
    shardId: i.shardId,
    records: i.result.records,
    commits: i.result.commits,
    warm: i.result.warm ?? false,
    stateBatchGets: count(i.requests, 'BatchGetItem state').requests,
    stateKeysRead: count(i.requests, 'BatchGetItem state').keys,
    requests: Object.fromEntries(
      [...i.requests].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, v.requests]),
    ),
  });
  console.info(
    `worker-handler: ${Math.round(elapsedMs)} ms for ${warm.length + cold.length} invocations\n` +
      `warm:\n${warm.map((i) => JSON.stringify(row(i))).join('\n')}\n` +
      `cold:\n${cold.map((i) => JSON.stringify(row(i))).join('\n')}`,
  );

  // Each job catches up with every stage on both shards (which all have records), and the two
  // process the same records per stage and shard.
  const perStage = (invocations: Invocation[]) =>
    STAGES.flatMap((_, stage) =>
      SHARDS.map((shardId) => {
        const of = invocations.filter((i) => i.stage === stage && i.shardId === shardId);
        return {
          stage,
          shardId,
          records: of.reduce((n, i) => n + i.result.records, 0),
          caughtUp: of.at(-1)?.result.caughtUp,
        };
      }),
    );
  for (const s of perStage(warm)) {
    expect(s.caughtUp, `${s.shardId} stage ${s.stage}`).toBe(true);
    expect(s.records, `${s.shardId} stage ${s.stage}`).toBeGreaterThan(0);
  }
  expect(perStage(cold)).toEqual(perStage(warm));
  expect(warm.reduce((n, i) => n + i.result.records, 0)).toBe(VIEWS.length);
  for (const i of [...warm, ...cold]) {
    expect(i.result.finished, `${i.shardId} stage ${i.stage}`).toBe(false);
    expect(i.result.paused, `${i.shardId} stage ${i.stage}`).toBeUndefined();
  }

  // The warm container starts each shard cold and then goes on with the kept task; a new
  // container always starts cold.
  const first = (invocations: Invocation[], i: Invocation): boolean =>
    invocations.find((x) => x.shardId === i.shardId) === i;
  expect(warm.map((i) => i.result.warm ?? false)).toEqual(warm.map((i) => !first(warm, i)));
  expect(cold.map((i) => i.result.warm ?? false)).toEqual(cold.map(() => false));

  // A warm invocation reads no state; a cold one that processes records after the shard's first
  // invocation reads the state of the pages it sees (their open windows) again.
  for (const i of warm.filter((x) => !first(warm, x))) {
    expect(count(i.requests, 'BatchGetItem state'), `warm ${i.shardId} stage ${i.stage}`).toEqual({
      requests: 0,
      keys: 0,
    });
  }
  const coldReads = cold.filter((x) => !first(cold, x) && x.result.records > 0);
  expect(coldReads.filter((i) => i.stage > 0).length).toBeGreaterThanOrEqual(4);
  for (const i of coldReads) {
    expect(
      count(i.requests, 'BatchGetItem state').requests,
      `cold ${i.shardId} stage ${i.stage}`,
    ).toBeGreaterThan(0);
  }

  // The same outputs: S3 objects `outputs/<job>/<sink>/<job>/<shard>/<commit>.ndjson` of lines
  // {"id": "<job>/<shard>/<commit>/<index>", "value": ...}, equal with the job ids replaced.
  const outputs = async (job: string): Promise<Array<[string, string]>> => {
    const prefix = `outputs/${job}/`;
    const objects = await readObjects(admin.s3, bucket, prefix);
    return [...objects]
      .map(([key, text]): [string, string] => [
        key.slice(prefix.length).replaceAll(`/${encodeURIComponent(job)}/`, '/JOB/'),
        text.replaceAll(JSON.stringify(`${job}/`).slice(0, -1), '"JOB/'),
      ])
      .sort(([a], [b]) => a.localeCompare(b));
  };
  const [warmOutputs, coldOutputs] = await Promise.all([outputs(warmTables.job), outputs(coldTables.job)]);
  const lines = (objects: Array<[string, string]>): string[] =>
    objects.flatMap(([, text]) => text.split('\n').filter((l) => l !== ''));
  expect(lines(warmOutputs).every((l) => l.startsWith('{"id":"JOB/'))).toBe(true);
  expect(lines(coldOutputs).length).toBeGreaterThan(50);
  expect(warmOutputs).toEqual(coldOutputs);
  const bySink = new Map<string, number>();
  for (const [key, text] of warmOutputs) {
    const sink = key.slice(0, key.indexOf('/'));
    bySink.set(sink, (bySink.get(sink) ?? 0) + text.split('\n').filter((l) => l !== '').length);
  }
  console.info(`worker-handler: outputs per sink ${JSON.stringify(Object.fromEntries(bySink))}`);
  expect(bySink.get('page-view-counts') ?? 0).toBeGreaterThan(50);

  // Nothing left unpublished.
  for (const t of [warmTables, coldTables]) {
    const backend = t.open();
    for (const shardId of SHARDS) expect(await backend.unpublishedOutputs(shardId)).toEqual([]);
  }
}, 90_000);

it('an invocation whose shard another invocation holds ends without an error: superseded', async () => {
  stream ??= await createTestStream(admin.kinesis, 'worker-handler', SHARDS.length);
  const held = await createBackendTables(admin, bucket, 'wh-held', 0);
  tables.push(held);
  const shardId = SHARDS[0]!;
  await held.open().acquireLease(shardId, 'another-invocation', Date.now(), 60_000);
  const logger = new Logger({ serviceName: 'floe-worker', logLevel: 'SILENT' });
  const warn = vi.spyOn(logger, 'warn');
  const error = vi.spyOn(logger, 'error');
  const handler = createWorkerHandler({
    loadPipeline: async () => pageViews,
    config: () => jobConfig(held),
    clients: () => jobClients(env),
    logger,
    metrics: quietMetrics(logger),
  });
  const result = await handler(
    { shardId },
    { awsRequestId: `req-held-${Date.now()}`, getRemainingTimeInMillis: () => REMAINING_MS },
  );
  expect(result).toMatchObject({ shardId, superseded: 'lease-unavailable', commits: 0, records: 0 });
  expect(warn).toHaveBeenCalledWith(
    'worker superseded',
    expect.objectContaining({ superseded: 'lease-unavailable' }),
  );
  expect(error).not.toHaveBeenCalled();
}, 60_000);

// The shard's lease item (its checkpoint) read through a proxy in front of DynamoDB. Before, an
// invocation read it twice: once before the lease, to tell whether the shard had run before
// (startOfShard), and again under the lease, the read the worker starts from.
it.skipIf(!env.endpoints.dynamodb?.startsWith('http://'))(
  'an invocation reads its shard checkpoint once, under the lease: first run, later run, and a shard that may not run',
  async () => {
    stream ??= await createTestStream(admin.kinesis, 'worker-handler', SHARDS.length);
    const t = await createBackendTables(admin, bucket, 'wh-once', 0);
    tables.push(t);
    // Records on both shards (the stream is shared: it may hold the first test's too).
    await putRecords(
      admin.kinesis,
      stream,
      STAGES[0]!.slice(0, 100).map((v) => ({ partitionKey: v.page, data: JSON.stringify(v) })),
    );
    const log = await startRequestLog(env.endpoints.dynamodb!);
    const logger = new Logger({ serviceName: 'floe-worker', logLevel: 'SILENT' });
    const warn = vi.spyOn(logger, 'warn');
    const handler = createWorkerHandler({
      loadPipeline: async () => pageViews,
      config: () => jobConfig(t),
      clients: () => jobClients({ ...env, endpoints: { ...env.endpoints, dynamodb: log.url } }),
      logger,
      metrics: quietMetrics(logger),
    });
    const invoke = (shardId: string) =>
      handler(
        { shardId },
        { awsRequestId: `req-once-${shardId}-${Date.now()}`, getRemainingTimeInMillis: () => REMAINING_MS },
      );
    const checkpointReads = (shardId: string): number =>
      log.count(
        'GetItem',
        (b) =>
          JSON.stringify(b.Key) ===
          JSON.stringify({ pk: { S: `${t.job}#0` }, sk: { S: `shard#${shardId}` } }),
      );
    try {
      const shardId = SHARDS[0]!;
      const first = await invoke(shardId);
      expect(first.commits).toBeGreaterThan(0);
      expect(checkpointReads(shardId)).toBe(1);
      expect(await t.open().readCheckpoint(shardId)).toBeDefined();
      const later = await invoke(shardId);
      expect(later.superseded).toBeUndefined();
      expect(checkpointReads(shardId)).toBe(2);

      // Not in the stream: not started, and its lease (taken to read the checkpoint) released.
      const absent = 'shardId-000000000999';
      const none = await invoke(absent);
      expect(none).toMatchObject({ shardId: absent, records: 0, commits: 0, finished: false });
      expect(warn).toHaveBeenCalledWith(
        'worker not started',
        expect.objectContaining({ reason: expect.any(String) }),
      );
      expect(checkpointReads(absent)).toBe(1);
      expect((await t.open().leaseInfo(absent))?.expiresAt ?? 0).toBeLessThanOrEqual(Date.now());
      expect(await t.open().readCheckpoint(absent)).toBeUndefined();
    } finally {
      log.close();
    }
  },
  60_000,
);
