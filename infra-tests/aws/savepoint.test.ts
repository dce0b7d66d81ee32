/**
 * Savepoints and replay on the AWS backend (Kinesis + DynamoDB + S3) against the emulators:
 * a savepoint in the middle of the input, replays as new jobs (same and fixed pipeline) beside
 * the original, stop-with-savepoint and replay into a new generation, corrupted and missing
 * files, and the savepoint Lambda handler. A few thousand events; sinks are collected in memory
 * (the sinks are not what is tested here).
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetItemCommand, QueryCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { marshall, unmarshall } from '@aws-sdk/util-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DynamoBackend } from '../../lib/aws/dynamodb-backend.ts';
import type { AwsClientsBundle, AwsJobConfig } from '../../lib/aws/job.ts';
import { openAwsJob } from '../../lib/aws/job.ts';
import { DynamoJobStore, jobRecordKey } from '../../lib/aws/job-store.ts';
import { putRecords } from '../../lib/aws/kinesis-source.ts';
import { createBucket, createStream, createTables } from '../../lib/aws/resources.ts';
import { openAwsJobForRun, openAwsJobFromRecord } from '../../lib/aws/run-job.ts';
import { createSavepointHandler } from '../../lib/aws/savepoint-handler.ts';
import { awsSavepointBackend } from '../../lib/aws/savepoints.ts';
import {
  compile,
  deserializeCheckpoint,
  initialCheckpoint,
  type Output,
  type Pipeline,
  type SavepointManifest,
  type Sink,
} from '../../lib/core/index.ts';
import {
  type Click,
  clicksPipeline,
  generateClicks,
  WINDOW_MS,
} from '../../lib/embedded/testing/savepoint-pipelines.ts';
import type { JobRecord } from '../../lib/runtime/job-control.ts';
import { runJob } from '../../lib/runtime/local-runner.ts';
import {
  abandonRestore,
  createSavepoint,
  listSavepoints,
  restoreSavepoint,
} from '../../lib/runtime/savepoints.ts';
import { pausePoint } from '../../lib/runtime/testing/pause-point.ts';
import {
  type AwsClients,
  awsClients,
  awsProcessEnv,
  setupAwsTestEnv,
  uniqueName,
} from '../env/aws-clients.ts';
import { startRequestLog } from '../env/request-log.ts';

const env = await setupAwsTestEnv();
let clients: AwsClients;
let bundle: AwsClientsBundle;
const stream = uniqueName('sp-clicks');
const stateTable = uniqueName('sp-state');
const controlTable = uniqueName('sp-control');
const bucket = uniqueName('sp-bucket');

const CLICKS = generateClicks(2400, { seed: 5, users: 8 });
const v1 = clicksPipeline('v1');
const v2 = clicksPipeline('v2');

beforeAll(async () => {
  clients = awsClients(env);
  bundle = { kinesis: clients.kinesis, dynamodb: clients.dynamodb, s3: clients.s3, destroy: () => {} };
  await Promise.all([
    createStream(clients.kinesis, stream, 2),
    createTables(clients.dynamodb, stateTable, controlTable),
    createBucket(clients.s3, bucket),
  ]);
});
afterAll(() => clients?.destroy());

const config = (job: string): AwsJobConfig => ({ job, stream, stateTable, controlTable, bucket, sinks: [] });
const backend = () => awsSavepointBackend({ clients: bundle, stateTable, controlTable, bucket });
/** The floe CLI as a child process, on this file's resources (with `extraEnv` over its environment). */
const floeWith = (extraEnv: Record<string, string>, ...args: string[]) =>
  promisify(execFile)(process.execPath, [join(import.meta.dirname, '../../bin/floe.js'), ...args], {
    env: { ...process.env, ...awsProcessEnv(env), FLOE_DEBUG: '', ...extraEnv },
  });
const floe = (...args: string[]) => floeWith({}, ...args);
const aws = [
  '--backend',
  'aws',
  '--state-table',
  stateTable,
  '--control-table',
  controlTable,
  '--bucket',
  bucket,
];

async function put(clicks: readonly Click[]): Promise<void> {
  const outcomes = await putRecords(
    clients.kinesis,
    stream,
    clicks.map((c) => ({ partitionKey: c.user, data: JSON.stringify(c) })),
  );
  expect(outcomes.every((o) => o.sequenceNumber !== undefined)).toBe(true);
}

/** Published outputs per job, by id (the collecting sink is idempotent, like the real ones). */
const published = new Map<string, Map<string, Output>>();
function collector(job: string): Sink {
  const map = published.get(job) ?? new Map<string, Output>();
  published.set(job, map);
  return {
    async publish(outputs) {
      for (const o of outputs) map.set(o.id, o);
    },
  };
}

async function run(job: string, pipeline: Pipeline): Promise<void> {
  const { runtime } = await openAwsJobForRun(compile(pipeline), config(job), bundle);
  await runJob(
    { ...runtime, sink: collector(job) },
    {
      untilIdle: true,
      batchSize: 400,
      leaseTtlMs: 10_000,
      roundPauseMs: 50,
      idlePollMs: 20,
      controlPollMs: 20,
    },
  );
}

/** Per shard, output values in (commit, index) order, optionally only after a cut. */
function byShard(job: string, after?: ReadonlyMap<string, number>): Record<string, unknown[]> {
  const rows = [...(published.get(job)?.values() ?? [])].map((o) => {
    const [, shard, commit, index] = o.id.split('/');
    return { shard: shard!, commit: Number(commit), index: Number(index), sink: o.sink, value: o.value };
  });
  rows.sort((a, b) =>
    a.shard < b.shard ? -1 : a.shard > b.shard ? 1 : a.commit - b.commit || a.index - b.index,
  );
  const out: Record<string, unknown[]> = {};
  for (const r of rows) {
    if (after !== undefined && r.commit <= (after.get(r.shard) ?? -1)) continue;
    out[r.shard] = [...(out[r.shard] ?? []), { sink: r.sink, value: r.value }];
  }
  return out;
}

function cut(manifest: SavepointManifest): Map<string, number> {
  return new Map(
    manifest.shards.map((s) => {
      const cp = deserializeCheckpoint(JSON.stringify(s.checkpoint));
      return [cp.shardId, cp.commitNumber];
    }),
  );
}

describe('savepoints on AWS (emulators)', () => {
  let saved: SavepointManifest;

  it('savepoint mid-input; replays beside the original (same and fixed pipeline) and stop-with-savepoint are exact', async () => {
    await put(CLICKS.slice(0, 1200));
    await Promise.all([run('a', v1), run('s', v1)]);
    saved = await createSavepoint(backend(), { job: 'a', chunkEntries: 4 });
    const stop = await createSavepoint(backend(), { job: 's', stop: true });
    expect(saved.files.length).toBeGreaterThan(1);
    expect(saved.shards).toHaveLength(2);
    expect(saved.backend).toBe('aws');
    expect(await new DynamoJobStore(clients.dynamodb, controlTable).get('s')).toMatchObject({
      state: 'stopped',
    });
    await expect(openAwsJobForRun(compile(v1), config('s'), bundle)).rejects.toThrow(
      /was stopped with savepoint/,
    );

    await put(CLICKS.slice(1200));
    await restoreSavepoint(backend(), { savepointId: saved.id, plan: compile(v1), asJob: 'b' });
    await restoreSavepoint(backend(), { savepointId: saved.id, plan: compile(v2), asJob: 'c' });
    const resumed = await restoreSavepoint(backend(), { savepointId: stop.id, plan: compile(v1) });
    expect(resumed).toMatchObject({ job: 's', generation: 1 });
    await Promise.all([run('a', v1), run('b', v1), run('c', v2), run('s', v1), run('ref', v1)]);

    // The copy's sinks equal what the original emitted after the savepoint.
    const afterCut = byShard('a', cut(saved));
    expect(Object.values(afterCut).flat().length).toBeGreaterThan(0);
    expect(byShard('b')).toEqual(afterCut);
    // The fixed pipeline reports the same windows with the correct counts.
    const fixed = Object.fromEntries(
      Object.entries(afterCut).map(([shard, outputs]) => [
        shard,
        (outputs as Array<{ sink: string; value: { clicks: number } }>).map((o) =>
          o.sink === 'counts' ? { ...o, value: { ...o.value, clicks: o.value.clicks - 1 } } : o,
        ),
      ]),
    );
    expect(byShard('c')).toEqual(fixed);
    const truth = new Map<string, number>();
    for (const c of CLICKS) {
      const key = `${c.user}@${Math.floor(c.ts / WINDOW_MS) * WINDOW_MS}`;
      truth.set(key, (truth.get(key) ?? 0) + 1);
    }
    for (const o of [...published.get('c')!.values()].filter((o) => o.sink === 'counts')) {
      const v = o.value as { user: string; start: number; clicks: number };
      expect(v.clicks).toBe(truth.get(`${v.user}@${v.start}`));
    }
    // Exactly once overall, and stop-with-savepoint + replay equals an uninterrupted run.
    expect(byShard('a')).toEqual(byShard('ref'));
    expect(byShard('s')).toEqual(byShard('ref'));
    expect(new Set([...published.get('s')!.keys()].map((id) => id.split('/')[0]))).toEqual(
      new Set(['s', 's@1']),
    );
  }, 120_000);

  it('refuses a corrupted or missing file, restoring nothing; the Lambda handler takes savepoints', async () => {
    const jobs = new DynamoJobStore(clients.dynamodb, controlTable);
    const corrupted = await createSavepoint(backend(), { job: 'a', chunkEntries: 4 });
    await clients.s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: `savepoints/${corrupted.id}/${corrupted.files[0]!.name}`,
        Body: 'not gzip',
      }),
    );
    await expect(
      restoreSavepoint(backend(), { savepointId: corrupted.id, plan: compile(v1), asJob: 'bad' }),
    ).rejects.toThrow(/state-00000\.ndjson\.gz is corrupted: its sha256 or size does not match the manifest/);
    expect(await jobs.get('bad')).toBeUndefined();

    await backend().snapshots.write(saved.id, 'manifest.json', new Uint8Array()); // an empty manifest
    await expect(
      restoreSavepoint(backend(), { savepointId: saved.id, plan: compile(v1), asJob: 'bad2' }),
    ).rejects.toThrow(/manifest\.json is not valid JSON/);
    expect(await jobs.get('bad2')).toBeUndefined();

    const handler = createSavepointHandler({
      config: () => config('a'),
      clients: () => bundle,
      loadPipeline: async () => v1,
      logger: { appendKeys() {}, info() {}, error() {} } as never,
    });
    const result = await handler({}, { getRemainingTimeInMillis: () => 120_000 });
    expect(result).toMatchObject({
      location: `s3://${bucket}/savepoints/${result.id}/`,
      stopped: false,
      shards: 2,
    });
    const listed = await listSavepoints(backend().snapshots);
    expect(listed.find((s) => s.id === result.id)?.status).toBe('complete');
    expect(listed.find((s) => s.id === saved.id)?.status).toBe('damaged');
    expect((await jobs.get('a'))?.state).toBe('running');

    // The CLI on the aws backend: inspect --verify and list.
    const inspected = await floe('savepoint', 'inspect', result.id, '--verify', ...aws);
    expect(inspected.stdout).toMatch(/on the aws backend/);
    expect(inspected.stdout).toMatch(/verified: every file matches its sha256/);
    const listed2 = await floe('savepoint', 'list', '--json', ...aws);
    expect((JSON.parse(listed2.stdout) as Array<{ id: string }>).map((s) => s.id)).toContain(result.id);
  }, 60_000);

  it('the savepoint function of a job deployed with a generation and no job record saves that generation', async () => {
    // Generation 0 ran once; the job was then redeployed with `generation: 2` (a fresh start).
    // Its Lambda workers run generation 2 as long as the job has no record.
    const deployed = { ...config('g'), generation: 2 };
    await put(CLICKS.slice(0, 100)); // (the stream is empty when this test runs alone)
    await runJob(
      { ...openAwsJob(compile(v1), config('g'), bundle), sink: collector('g0') },
      { untilIdle: true },
    );
    const opened = await openAwsJobFromRecord(compile(v1), deployed, bundle);
    await runJob({ ...opened.runtime!, sink: collector('g') }, { untilIdle: true, controlPollMs: 20 });
    const handler = createSavepointHandler({
      config: () => deployed,
      clients: () => bundle,
      loadPipeline: async () => v1,
      logger: { appendKeys() {}, info() {}, error() {} } as never,
    });
    const result = await handler({}, { getRemainingTimeInMillis: () => 120_000 });
    const manifest = (await listSavepoints(backend().snapshots)).find((s) => s.id === result.id)?.manifest;
    expect(manifest?.generation).toBe(2);
    // The record the savepoint wrote keeps the workers on generation 2.
    expect((await new DynamoJobStore(clients.dynamodb, controlTable).get('g'))?.generation).toBe(2);
    expect((await openAwsJobFromRecord(compile(v1), deployed, bundle)).runtime?.job).toBe('g@2');
  }, 60_000);

  it('floe run of a job deployed with a generation and no job record runs that generation', async () => {
    const deployed = { ...config('gr'), generation: 2 };
    const run = await openAwsJobForRun(compile(v1), deployed, bundle);
    expect(run.generation).toBe(2);
    expect((await openAwsJobFromRecord(compile(v1), deployed, bundle)).runtime?.job).toBe('gr@2');
  });

  it('floe savepoint create --generation saves the generation of a job without a record, and refuses another once it has one', async () => {
    const deployed = { ...config('gc'), generation: 2 };
    await put(CLICKS.slice(0, 100)); // (the stream is empty when this test runs alone)
    const opened = await openAwsJobFromRecord(compile(v1), deployed, bundle);
    await runJob({ ...opened.runtime!, sink: collector('gc') }, { untilIdle: true, controlPollMs: 20 });
    const create = ['savepoint', 'create', '--job', 'gc', '--stream', stream, '--progress', 'none'];
    // Through a proxy that logs the DynamoDB requests: the job record is read once before the
    // savepoint writes it (before, once more for the --generation check).
    const log = await startRequestLog(env.endpoints.dynamodb!);
    const created = await floeWith(
      { AWS_ENDPOINT_URL_DYNAMODB: log.url },
      ...create,
      ...aws,
      '--generation',
      '2',
    ).finally(() => log.close());
    type Keyed = { pk?: unknown; sk?: unknown } | undefined;
    const isRecord = (key: Keyed) =>
      JSON.stringify({ pk: key?.pk, sk: key?.sk }) ===
      JSON.stringify({ pk: { S: '@job/gc' }, sk: { S: 'job' } });
    const firstWrite = log.requests.findIndex(
      (r) => r.operation === 'PutItem' && isRecord(r.body?.Item as Keyed),
    );
    expect(firstWrite).toBeGreaterThan(0);
    const readsBefore = log.requests
      .slice(0, firstWrite)
      .filter((r) => r.operation === 'GetItem' && isRecord(r.body?.Key as Keyed));
    expect(readsBefore).toHaveLength(1);
    const id = created.stdout.trim();
    const manifest = (await listSavepoints(backend().snapshots)).find((s) => s.id === id)?.manifest;
    expect(manifest?.generation).toBe(2);
    expect(manifest?.entries).toBeGreaterThan(0);
    expect((await new DynamoJobStore(clients.dynamodb, controlTable).get('gc'))?.generation).toBe(2);
    const refused = await floe(...create, ...aws, '--generation', '0').catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect(refused).toMatchObject({ code: 1 });
    expect((refused as { stderr: string }).stderr.trim()).toBe(
      'floe: --generation 0: job "gc" has a job record, which names generation 2 (a replay moves it); drop --generation, which is only for a job without a record',
    );
  }, 60_000);

  it('a rerun completes a restore whose job record lacks the restoring attribute (written by an older floe): it rewrites the record first', async () => {
    await put(CLICKS.slice(0, 40)); // so that every shard has a checkpoint even when run alone
    await run('up', v1);
    const shard = 'shardId-000000000000';
    const undelivered = { id: `up/${shard}/999999/0`, sink: 'counts', value: 'undelivered' };
    const gen0 = backend().scope('up', 0).backend as DynamoBackend;
    expect(await gen0.importOutputs(shard, [undelivered])).toBe(true);
    const manifest = await createSavepoint(backend(), { job: 'up' });
    const crash = new Error('crashed after the state files');
    await expect(
      restoreSavepoint(backend(), {
        savepointId: manifest.id,
        plan: compile(v1),
        onStep: (step) => {
          if (step === 'entries-written') throw crash;
        },
      }),
    ).rejects.toBe(crash);
    // The record of a restore an older floe started carries no `restoring` attribute.
    await clients.dynamodb.send(
      new UpdateItemCommand({
        TableName: controlTable,
        Key: marshall(jobRecordKey('up')),
        UpdateExpression: 'REMOVE restoring',
        ConditionExpression: 'attribute_exists(restoring)',
      }),
    );
    const done = await restoreSavepoint(backend(), { savepointId: manifest.id, plan: compile(v1) });
    expect(done).toMatchObject({ job: 'up', generation: 1 });
    const gen1 = backend().scope('up', 1).backend as DynamoBackend;
    expect((await gen1.unpublishedOutputs(shard)).map((o) => o.id)).toContain(undelivered.id);
  }, 60_000);

  it("a stalled restore cannot put back outputs the live generation delivered: each outbox item is checked against the job record's restore", async () => {
    const jobs = new DynamoJobStore(clients.dynamodb, controlTable);
    const restoring = {
      job: 'ob',
      generation: 0,
      nextGeneration: 2,
      state: 'running' as const,
      stream,
      restore: { savepointId: 'sp-ob', generation: 1, startedAt: 1 },
      version: 1,
      updatedAt: 1,
    };
    expect(await jobs.put(restoring, undefined)).toBe(true);
    const guard = { job: 'ob', savepointId: 'sp-ob', generation: 1 };
    const scope = backend().scope('ob', 1);
    const shard = 'shardId-000000000000';
    const outputs = [
      { id: `ob/${shard}/7/0`, sink: 'out', value: 1 },
      { id: `ob/${shard}/8/0`, sink: 'out', value: 2 },
    ];
    await scope.importOutputs(shard, outputs, guard);
    const live = scope.backend as DynamoBackend;
    expect((await live.unpublishedOutputs(shard)).map((o) => o.id)).toEqual(outputs.map((o) => o.id));
    // The restore completes (a rerun); the generation's worker delivers the outputs.
    const { restore: _r, ...done } = restoring;
    expect(await jobs.put({ ...done, generation: 1, version: 2, updatedAt: 2 }, 1)).toBe(true);
    await live.markPublished(
      shard,
      outputs.map((o) => o.id),
    );
    // The stalled restore wakes up and writes its outputs: refused, nothing put back.
    await expect(scope.importOutputs(shard, outputs, guard)).rejects.toThrow(
      /restore of savepoint sp-ob into job ob \(generation 1\) was completed or superseded by another replay/,
    );
    expect(await live.unpublishedOutputs(shard)).toEqual([]);
  });

  it('floe savepoint delete finds the restores that still need a savepoint: a Scan of the control table for job records', async () => {
    const jobs = new DynamoJobStore(clients.dynamodb, controlTable);
    const record = (job: string, savepointId: string | undefined): JobRecord => ({
      job,
      generation: 0,
      nextGeneration: 1,
      state: savepointId === undefined ? 'running' : 'restoring',
      stream,
      ...(savepointId === undefined ? {} : { restore: { savepointId, generation: 0, startedAt: 1 } }),
      version: 1,
      updatedAt: 1,
    });
    for (const r of [
      record('rf-a', 'sp-rf'),
      record('rf-x', undefined),
      record('rf-b', 'sp-rf'),
      record('rf-c', 'sp-rf0'),
    ]) {
      expect(await jobs.put(r, undefined)).toBe(true);
    }
    // The table also holds the leases, checkpoints and outboxes of the jobs of the tests above.
    expect((await jobs.restoresFrom('sp-rf')).map((r) => r.job).sort()).toEqual(['rf-a', 'rf-b']);
    expect(await jobs.restoresFrom('sp-none')).toEqual([]);
  });

  it('a removed job record leaves its next generation in its item: no reader sees a job, and a later record of the id starts past it and continues its versions', async () => {
    const jobs = new DynamoJobStore(clients.dynamodb, controlTable);
    const restoring: JobRecord = {
      job: 'fr',
      generation: 2,
      nextGeneration: 3,
      state: 'restoring',
      stream,
      restore: { savepointId: 'sp-fr', generation: 2, startedAt: 1 },
      version: 4,
      updatedAt: 1,
    };
    expect(await jobs.put(restoring, undefined)).toBe(true);
    expect((await jobs.lookup('fr')).freed).toBeUndefined();
    expect(await jobs.delete({ ...restoring, version: 3 })).toBe(false);
    expect(await jobs.delete(restoring)).toBe(true);
    expect(await jobs.delete(restoring)).toBe(false);
    const item = await clients.dynamodb.send(
      new GetItemCommand({
        TableName: controlTable,
        Key: marshall(jobRecordKey('fr')),
        ConsistentRead: true,
      }),
    );
    expect(unmarshall(item.Item!)).toEqual({ ...jobRecordKey('fr'), version: 5, freed: 3 });
    expect(await jobs.get('fr')).toBeUndefined();
    expect(await jobs.restoresFrom('sp-fr')).toEqual([]);
    expect((await jobs.lookup('fr')).freed).toEqual({ job: 'fr', nextGeneration: 3, version: 5 });
    // A write that read the removed record, or no record at all, does not land.
    expect(await jobs.put({ ...restoring, version: 5 }, 4)).toBe(false);
    expect(await jobs.put({ ...restoring, version: 1 }, undefined)).toBe(false);
    // Nor does a restore's checkpoint (its transaction checks the `restoring` attribute).
    const guard = { job: 'fr', savepointId: 'sp-fr', generation: 2 };
    await expect(
      backend().scope('fr', 2).importCheckpoint(initialCheckpoint('shardId-000000000000'), guard),
    ).rejects.toThrow(/was completed or superseded by another replay, or abandoned/);
    // floe run of the id: a record past the removed one's generations and versions.
    const run = await openAwsJobForRun(compile(v1), config('fr'), bundle);
    expect(run).toMatchObject({ generation: 3, record: { generation: 3, nextGeneration: 4, version: 6 } });
    expect((await jobs.lookup('fr')).freed).toBeUndefined();
  });

  it('floe replay --abandon (in process): a restore stalled into the same job or a new one, resumed after the abandon, writes nothing more; the records are as before', async () => {
    await put(CLICKS.slice(0, 40)); // so that every shard has a checkpoint even when run alone
    await run('ab', v1);
    const manifest = await createSavepoint(backend(), { job: 'ab', chunkEntries: 3 });
    expect(manifest.files.length).toBeGreaterThan(1);
    const jobs = backend().jobs;
    const comparable = (r: JobRecord | undefined) => {
      const { version: _v, updatedAt: _u, nextGeneration: _n, ...rest } = r!;
      return rest;
    };
    for (const [target, asJob, generation] of [
      ['ab', undefined, 1],
      ['ab2', 'ab2', 0],
    ] as const) {
      const before = await jobs.get(target);
      let release!: () => void;
      let reached!: () => void;
      const paused = new Promise<void>((resolve) => {
        reached = resolve;
      });
      const stalled = restoreSavepoint(backend(), {
        savepointId: manifest.id,
        plan: compile(v1),
        ...(asJob === undefined ? {} : { asJob }),
        onStep: async (step, index) => {
          if (step !== 'entries-written' || index !== 0) return;
          reached();
          await new Promise<void>((resolve) => {
            release = resolve;
          });
        },
      });
      await paused;
      const scope = backend().scope(target, generation);
      const entries = async () => {
        let n = 0;
        for await (const _ of scope.entries()) n++;
        return n;
      };
      const partial = await entries();
      expect(partial).toBeGreaterThan(0);
      const result = await abandonRestore(backend(), { job: target });
      expect(result).toMatchObject({
        generation,
        discarded: { stateEntries: partial, checkpoints: 0 },
        record: asJob === undefined ? { generation: 0, nextGeneration: 2, state: 'running' } : undefined,
      });
      const abandoned = await jobs.get(target);
      release();
      await expect(stalled).rejects.toThrow(
        `the restore of savepoint ${manifest.id} into job ${target} (generation ${generation}) was completed or superseded by another replay, or abandoned`,
      );
      expect(await jobs.get(target)).toEqual(abandoned);
      if (asJob === undefined) expect(comparable(abandoned)).toEqual(comparable(before));
      else expect(abandoned).toBeUndefined();
      expect(await entries()).toBe(0);
      expect(await scope.isEmpty()).toBe(true);
      const control = await clients.dynamodb.send(
        new QueryCommand({
          TableName: controlTable,
          KeyConditionExpression: 'pk = :pk',
          ExpressionAttributeValues: marshall({ ':pk': `${target}#${generation}` }),
        }),
      );
      expect(control.Items).toEqual([]);
    }
    // The savepoint is needed by no restore any more; a later replay takes a fresh generation.
    expect(await jobs.restoresFrom(manifest.id)).toEqual([]);
    const replayed = await restoreSavepoint(backend(), { savepointId: manifest.id, plan: compile(v1) });
    expect(replayed.generation).toBe(2);
  }, 60_000);

  it("a restore's checkpoint write is checked against the job record's restore in its transaction: none lands after an abandon", async () => {
    const jobs = new DynamoJobStore(clients.dynamodb, controlTable);
    const before: JobRecord = {
      job: 'ac',
      generation: 0,
      nextGeneration: 1,
      state: 'running',
      stream,
      version: 1,
      updatedAt: 1,
    };
    const restoring: JobRecord = {
      ...before,
      nextGeneration: 2,
      restore: { savepointId: 'sp-ac', generation: 1, startedAt: 1 },
      version: 2,
    };
    expect(await jobs.put(before, undefined)).toBe(true);
    expect(await jobs.put(restoring, 1)).toBe(true);
    const guard = { job: 'ac', savepointId: 'sp-ac', generation: 1 };
    const scope = backend().scope('ac', 1);
    await scope.importCheckpoint({ ...initialCheckpoint('shardId-000000000000'), commitNumber: 3 }, guard);
    const result = await abandonRestore(backend(), { job: 'ac' });
    expect(result.discarded).toEqual({ stateEntries: 0, checkpoints: 1 });
    const { version: _v, updatedAt: _u, ...after } = (await jobs.get('ac'))!;
    expect(after).toEqual({ ...before, nextGeneration: 2, version: undefined, updatedAt: undefined });
    await expect(
      scope.importCheckpoint({ ...initialCheckpoint('shardId-000000000001'), commitNumber: 3 }, guard),
    ).rejects.toThrow(/was completed or superseded by another replay, or abandoned/);
    expect(await scope.isEmpty()).toBe(true);
  });

  it('floe replay --abandon --job (CLI): gives up a restore killed halfway into a new job; the savepoint can then be deleted', async () => {
    await put(CLICKS.slice(0, 40));
    await run('ak', v1);
    const manifest = await createSavepoint(backend(), { job: 'ak', chunkEntries: 3 });
    const crashed = await floeWith(
      { FLOE_FAULT: 'restore:entries-written:0' },
      'replay',
      '--from-savepoint',
      manifest.id,
      '--as-job',
      'ak2',
      '--pipeline',
      join(import.meta.dirname, '../../lib/embedded/testing/clicks-v1.ts'),
      '--restore-only',
      ...aws,
    ).catch((e: { signal?: string }) => e);
    expect((crashed as { signal?: string }).signal, JSON.stringify(crashed)).toBe('SIGKILL');
    expect(await backend().jobs.get('ak2')).toMatchObject({ state: 'restoring' });
    // The savepoint cannot be deleted yet; the refusal gives both ways out, with the resources.
    const refused = await floe('savepoint', 'delete', manifest.id, ...aws).catch(
      (e: { stderr: string }) => e,
    );
    const abandon = `floe replay --abandon --job ak2 ${aws.join(' ')}`;
    expect(refused.stderr).toContain(
      `rerun that replay ('floe replay --from-savepoint ${manifest.id} --as-job ak2 --restore-only ${aws.join(' ')}', with the same --pipeline and --migration) — or give it up ('${abandon}')`,
    );
    // The abandon as printed.
    const abandoned = await floe(...abandon.split(' ').slice(1));
    expect(abandoned.stderr.trim()).toMatch(
      new RegExp(
        `^floe replay: abandoned the restore of savepoint ${manifest.id} into job ak2 \\(generation 0\\): job ak2, which the restore had created, is removed with what the restore wrote \\([1-9]\\d* state entries and 0 shard checkpoint\\(s\\)\\); the id can be used again \\(a later job of it starts at generation 1\\)$`,
      ),
    );
    expect(await backend().jobs.get('ak2')).toBeUndefined();
    // Nothing lists it; its status is that of a job that has not run (in its next generation).
    const status = await floe('status', '--job', 'ak2', '--stream', stream, '--json', ...aws);
    expect(JSON.parse(status.stdout)).toMatchObject({ known: false, generation: 1 });
    // A --generation below it is raised, with a warning saying why.
    const raised = await floe(
      'status',
      '--job',
      'ak2',
      '--stream',
      stream,
      '--generation',
      '0',
      '--json',
      ...aws,
    );
    expect(JSON.parse(raised.stdout)).toMatchObject({ known: false, generation: 1 });
    expect(raised.stderr.trim()).toBe(
      'floe status: warning: --generation 0: job ak2 has no job record and its id was freed by an abandoned restore, which may have written up to generation 0; using generation 1, as its workers do',
    );
    expect(status.stderr).toBe('');
    await floe('savepoint', 'delete', manifest.id, ...aws);
    expect((await listSavepoints(backend().snapshots)).map((s) => s.id)).not.toContain(manifest.id);
    const again = await floe('replay', '--abandon', '--job', 'ak', ...aws).catch(
      (e: { stderr: string }) => e,
    );
    expect(again.stderr.trim()).toBe(
      'floe: job ak has no restore in progress: it runs generation 0 (running); there is nothing to abandon',
    );
  }, 60_000);

  /**
   * A DynamoDB client for a restore process that is suspended in the middle of a batch of state
   * entries, after its check of the job record: the state table's PutItems after the first
   * `after` wait until release().
   */
  function stalledStateWrites(after: number) {
    const stalled = awsClients(env);
    let puts = 0;
    const pause = pausePoint();
    stalled.dynamodb.middlewareStack.add(
      (next, context) => async (args) => {
        const table = (args.input as { TableName?: string }).TableName;
        if (context.commandName === 'PutItemCommand' && table === stateTable && ++puts > after) {
          await pause.wait();
        }
        return next(args);
      },
      { step: 'initialize', name: 'stallStateWrites' },
    );
    const restoring = awsSavepointBackend({
      clients: stalled,
      stateTable,
      controlTable,
      bucket,
    });
    return {
      backend: restoring,
      reached: pause.reached,
      release: pause.release,
      destroy: () => stalled.destroy(),
    };
  }

  it('a restore --as-job stalled inside a batch of state entries writes the rest of it after the abandon; no later job of that id (floe run, replay --as-job) sees those entries', async () => {
    await put(CLICKS.slice(0, 40)); // so that every shard has a checkpoint even when run alone
    await run('lw', v1);
    const manifest = await createSavepoint(backend(), { job: 'lw' });
    expect(manifest.entries).toBeGreaterThan(2); // one batch (at most 2,000), stalled after 1
    const jobs = backend().jobs;
    const entriesOf = async (job: string, generation: number) => {
      const out: Array<[string, string]> = [];
      for await (const entry of backend().scope(job, generation).entries()) out.push([...entry]);
      return out;
    };
    const keyOf = (value: string) => String((JSON.parse(value) as { k: unknown }).k);

    /** Restores the savepoint into `target`, stalls it inside its batch, abandons it, lets it go on. */
    const abandonedWithLateWrites = async (target: string): Promise<Array<[string, string]>> => {
      const stall = stalledStateWrites(1);
      try {
        const stalled = restoreSavepoint(stall.backend, {
          savepointId: manifest.id,
          plan: compile(v1),
          asJob: target,
        });
        await stall.reached;
        const abandoned = await abandonRestore(backend(), { job: target });
        expect(abandoned).toMatchObject({ generation: 0, record: undefined, nextGeneration: 1 });
        expect(await jobs.get(target)).toBeUndefined();
        stall.release();
        await expect(stalled).rejects.toThrow(
          `the restore of savepoint ${manifest.id} into job ${target} (generation 0) was completed or superseded by another replay, or abandoned`,
        );
      } finally {
        stall.destroy();
      }
      // The rest of the batch landed after the abandon, in generation 0 of the removed job.
      const late = await entriesOf(target, 0);
      expect(late.length).toBeGreaterThan(0);
      expect(await jobs.get(target)).toBeUndefined();
      expect(await jobs.restoresFrom(manifest.id)).toEqual([]);
      return late;
    };

    // Both ids abandoned with late writes: one for a fresh run, one for another replay --as-job.
    await abandonedWithLateWrites('lw-run');
    const late = await abandonedWithLateWrites('lw-rep');
    // Without a record, the id's Lambda workers too run the next generation.
    expect((await openAwsJobFromRecord(compile(v1), config('lw-run'), bundle)).runtime?.job).toBe('lw-run@1');
    // The replay drops a user's state with a migration: the late entries hold it.
    const dropped = new Set(late.slice(0, 1).map(([, value]) => keyOf(value)));
    const migration = {
      state: (entry: { key: unknown }) => (dropped.has(String(entry.key)) ? undefined : entry),
    } as never;
    const replay = (asJob: string) =>
      restoreSavepoint(backend(), { savepointId: manifest.id, plan: compile(v1), asJob, migration });
    const replayed = await replay('lw-rep');
    const reference = await replay('lw-rep-ref');
    expect(replayed).toMatchObject({ job: 'lw-rep', generation: 1, written: reference.written });
    expect(reference.written).toBeLessThan(manifest.entries);
    const restored = await entriesOf('lw-rep', replayed.generation);
    expect(restored).toHaveLength(reference.written);
    expect(restored.filter(([, value]) => dropped.has(keyOf(value)))).toEqual([]);

    // Later clicks move event time past every window and burst the saved state holds, so that
    // each fires with its count: any late entry a job read would change one.
    const last = CLICKS.reduce((max, c) => Math.max(max, c.ts), 0);
    await put(generateClicks(300, { seed: 11, users: 8, start: last + 86_400_000 }));
    await Promise.all(['lw-run', 'lw-ref', 'lw-rep', 'lw-rep-ref'].map((job) => run(job, v1)));
    expect(await jobs.get('lw-run')).toMatchObject({ generation: 1, nextGeneration: 2, state: 'running' });
    expect(byShard('lw-run')).toEqual(byShard('lw-ref'));
    expect(Object.values(byShard('lw-rep')).flat().length).toBeGreaterThan(0);
    expect(byShard('lw-rep')).toEqual(byShard('lw-rep-ref'));
    for (const job of ['lw-run', 'lw-rep']) {
      expect(new Set([...published.get(job)!.keys()].map((id) => id.split('/')[0]))).toEqual(
        new Set([`${job}@1`]),
      );
    }
  }, 120_000);
});
