/**
 * End to end on the emulators: a 4-shard Kinesis stream (kinesis-local), the examples run through
 * runJob with the wiring of `openAwsJob` (lib/aws/job.ts): KinesisSource, DynamoBackend (DynamoDB +
 * S3 on moto) and sinks bound from `name=destination` specs: page-view counts and sessions upserted
 * into DynamoDB tables (keyed by page + windowStart and user + start), dead letters and late data as
 * NDJSON objects in S3. The sinks' final contents must equal `simulate` (lib/runtime/simulate.ts) on
 * the same records: the same per-shard order and arrival times, read back from the stream.
 *
 * Data: two streams of 50,000 clickstream events each (lib/runtime/clickstream.ts, with 10 %
 * out-of-order events and 2 % late ones), the page-view stream partitioned by page (1,200 pages, over
 * 1,000 of them seen) and the session stream by user (1,500 users), plus poison records: invalid
 * JSON and events without a timestamp (in both), and events of one page that the "strict" test
 * pipeline's map function refuses (it throws). The fault run (the strict pipeline with ~10 % of
 * the AWS calls failing) reads a third stream of 15,000 page clicks made the same way, in smaller
 * batches: moto serves one request at a time, and on the 50,000-event stream that run alone took
 * two minutes.
 *
 * Production of the data: kinesis-local 0.6.2 spends time proportional to the records already in a
 * shard on every put (measured: ~0.2 ms per record on an empty 4-shard stream, ~2 ms per record at
 * 2,500 records per shard, ~6 ms at 6,500), so 50,000 plain records (12,500 per shard) would take
 * minutes to put. The producer therefore KPL-aggregates most events (as the KPL does: up to 100 user
 * records of one shard per Kinesis record, ~2,000 Kinesis records per stream) and puts every 50th
 * event and all poison records as plain records, all with `putRecords`; KinesisSource de-aggregates
 * them (positions with sub-indexes).
 *
 * Idleness: final windows fire when a caught-up shard has been idle longer than the pipeline's idle
 * timeout (1 minute) by processing time. The job's clock is fixed a day after the last arrival, so
 * each shard's first empty read at its end fires everything, as `{"processingTime": T}` does at the
 * end of the simulate script. Nothing is idle earlier: arrival times come from Kinesis and every
 * record is put before the job starts.
 *
 * Emulator workarounds: the job's DynamoDB client runs moto's TransactWriteItems alone
 * (./moto-transactions.ts: moto's transactions are not isolated from concurrent requests), and the
 * fault run destroys the S3 response bodies the fault injector drops unread (see trackBodies and
 * faults-ambiguous.test.ts).
 *
 * Fencing (a stalled worker past its lease expiry is rejected with FencedError and changes nothing;
 * the new owner's results are exact) is covered on this same stack, on both commit paths, by
 * exactly-once.test.ts ("fencing: a stalled worker whose lease was taken over cannot commit ...").
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { ScanCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import userSessions from '../../examples/user-sessions.ts';
import { type FaultInjector, injectTransientFaults } from '../../lib/aws/faults.ts';
import { openAwsJob } from '../../lib/aws/job.ts';
import { KinesisSource, putRecords } from '../../lib/aws/kinesis-source.ts';
import { createBucket, createTables } from '../../lib/aws/resources.ts';
import {
  boundedOutOfOrderness,
  compile,
  count,
  DEAD_LETTER_SINK,
  minutes,
  type Output,
  type Pipeline,
  pipeline,
  seconds,
  shardName,
  tumbling,
  withIdleness,
} from '../../lib/core/index.ts';
import { type Click, clickstream } from '../../lib/runtime/clickstream.ts';
import { runJob } from '../../lib/runtime/local-runner.ts';
import { simulate } from '../../lib/runtime/simulate.ts';
import { type AwsClients, awsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { createTestStream, deleteTestStream } from '../env/kinesis-streams.ts';
import { jobClients } from './job-clients.ts';
import { kplEntries } from './kpl-entries.ts';
import { readObjects } from './s3-objects.ts';
import { createUpsertTable } from './upsert-tables.ts';

const env = await setupAwsTestEnv();
let admin: AwsClients;
const bucket = uniqueName('floe-e2e');
const streams: string[] = [];

const EVENTS = 50_000;
/**
 * Events of the fault run's own stream (page clicks, as the page stream). Its ~10 % of failed
 * calls need no more data to hit every path; on the 50,000-event stream it took 110 s of moto.
 */
const FAULT_EVENTS = 15_000;
/** Records per batch in the fault run: smaller, so it makes more commits and Kinesis calls. */
const FAULT_BATCH = 2_500;
const SHARDS = 4;
/** User records per KPL aggregate (at most). */
const AGGREGATE = 100;
/** Every PLAIN_EVERY-th event is put as a plain (not aggregated) record. */
const PLAIN_EVERY = 50;
const POISON_EVERY = 2_500;
const BOOM_PAGE = '/boom';
const BOOM_EVERY = 1_000;
const BATCH = 10_000;

// ---------------------------------------------------------------------------------------------
// The strict test pipeline: page-views whose first user function refuses one page.

interface PageView {
  readonly page: string;
  readonly user: string;
  readonly ts: number;
}

const strictPageViews = pipeline('page-views-strict');
strictPageViews
  .source<PageView>()
  .map((view) => {
    if (view.page === BOOM_PAGE) throw new Error(`page ${BOOM_PAGE} is refused`);
    return view;
  })
  .withTimestamps((view) => view.ts, withIdleness(boundedOutOfOrderness(seconds(5)), minutes(1)))
  .keyBy((view) => view.page)
  .window(tumbling({ size: minutes(1) }))
  .allowedLateness(seconds(30))
  .sideOutputLateData('late-page-views')
  .uid('page-view-counts')
  .aggregate(count<PageView>(), ({ key, window, result }) => ({
    page: key,
    windowStart: window.start,
    windowEnd: window.end,
    views: result,
  }))
  .sink('page-view-counts');

// ---------------------------------------------------------------------------------------------
// Data

interface Produced {
  readonly partitionKey: string;
  readonly text: string;
  /** Put as a plain Kinesis record rather than inside a KPL aggregate. */
  readonly plain: boolean;
}

interface ReadRecord {
  readonly partitionKey: string;
  readonly text: string;
  readonly sequenceNumber: string;
  readonly arrivalTime: number;
}

interface StreamData {
  readonly stream: string;
  /** Shard ids in order (index = simulate's shard index). */
  readonly shardIds: readonly string[];
  /** The records as read back, per shard, in order. */
  readonly records: readonly ReadRecord[][];
  /** Processing time of the run and of the simulate drain. */
  readonly drainAt: number;
  readonly produced: readonly Produced[];
  /** Distinct partition keys of the valid events. */
  readonly keys: number;
  readonly kinesisRecords: number;
}

let pageStream: StreamData;
let sessionStream: StreamData;
let faultStream: StreamData;

/** Events with poison records mixed in: invalid JSON and a missing timestamp, alternating. */
function withPoison(clicks: readonly Click[], key: (c: Click) => string): Produced[] {
  const out: Produced[] = [];
  clicks.forEach((c, n) => {
    const plain = n % PLAIN_EVERY === 0;
    out.push({ partitionKey: key(c), text: JSON.stringify(c), plain });
    if (n % POISON_EVERY === POISON_EVERY / 2) {
      const invalid = (n / POISON_EVERY) % 2 < 1;
      out.push({
        partitionKey: key(c),
        text: invalid
          ? `{"page": ${JSON.stringify(c.page)}, "ts": `
          : JSON.stringify({ ...c, ts: undefined }),
        plain: true,
      });
    }
  });
  return out;
}

async function readBack(stream: string): Promise<{ shardIds: string[]; records: ReadRecord[][] }> {
  const source = new KinesisSource({ client: admin.kinesis, stream });
  const shardIds = (await source.listShards()).map((s) => s.shardId).sort();
  const decoder = new TextDecoder();
  const records: ReadRecord[][] = [];
  for (const shardId of shardIds) {
    const reader = await source.openReader(shardId, { type: 'TRIM_HORIZON' });
    const list: ReadRecord[] = [];
    for (;;) {
      const r = await reader.read(BATCH);
      for (const rec of r.records) {
        list.push({
          partitionKey: rec.partitionKey,
          text: decoder.decode(rec.data as Uint8Array),
          sequenceNumber: rec.sequenceNumber,
          arrivalTime: rec.arrivalTime,
        });
      }
      if (r.shardEnded || (r.records.length === 0 && r.millisBehindLatest === 0)) break;
    }
    await reader.close();
    records.push(list);
  }
  return { shardIds, records };
}

async function produce(prefix: string, produced: Produced[], validKeys: Set<string>): Promise<StreamData> {
  const stream = await createTestStream(admin.kinesis, prefix, SHARDS);
  streams.push(stream);
  const shards = await new KinesisSource({ client: admin.kinesis, stream }).listShards();
  const entries = kplEntries(
    produced.map((r) => ({ partitionKey: r.partitionKey, data: r.text, plain: r.plain })),
    shards,
    AGGREGATE,
  );
  await putRecords(admin.kinesis, stream, entries);
  const { shardIds, records } = await readBack(stream);
  const all = records.flat();
  return {
    stream,
    shardIds,
    records,
    drainAt: Math.max(...all.map((r) => r.arrivalTime)) + 86_400_000,
    produced,
    keys: validKeys.size,
    kinesisRecords: entries.length,
  };
}

beforeAll(async () => {
  admin = awsClients(env);
  await createBucket(admin.s3, bucket);
  const pageClicks = (events: number, seed: number): Click[] =>
    [
      ...clickstream({
        events,
        pages: 1_200,
        users: 5_000,
        rate: 60,
        outOfOrder: 0.1,
        late: 0.02,
        seed,
      }),
    ].map((c, n) => (n % BOOM_EVERY === BOOM_EVERY / 2 ? { ...c, page: BOOM_PAGE } : c));
  const clicks = pageClicks(EVENTS, 101);
  const faultClicks = pageClicks(FAULT_EVENTS, 303);
  const sessionClicks = [
    ...clickstream({
      events: EVENTS,
      users: 1_500,
      pages: 40,
      rate: 4,
      outOfOrder: 0.1,
      late: 0.02,
      seed: 202,
    }),
  ];
  pageStream = await produce(
    'e2e-pages',
    withPoison(clicks, (c) => c.page),
    new Set(clicks.map((c) => c.page)),
  );
  faultStream = await produce(
    'e2e-faults',
    withPoison(faultClicks, (c) => c.page),
    new Set(faultClicks.map((c) => c.page)),
  );
  sessionStream = await produce(
    'e2e-sessions',
    withPoison(sessionClicks, (c) => c.user),
    new Set(sessionClicks.map((c) => c.user)),
  );
}, 300_000);

afterAll(async () => {
  if (admin === undefined) return;
  await Promise.all(streams.map((s) => deleteTestStream(admin.kinesis, s)));
  admin.destroy();
});

// ---------------------------------------------------------------------------------------------
// Expected results: simulate on the records as read back

async function simulated(p: Pipeline, data: StreamData): Promise<Output[]> {
  const lines: string[] = [];
  data.records.forEach((list, shard) => {
    for (const r of list) {
      lines.push(
        JSON.stringify({ partitionKey: r.partitionKey, raw: r.text, shard, arrival: r.arrivalTime }),
      );
    }
  });
  lines.push(JSON.stringify({ processingTime: data.drainAt }));
  const outputs: Output[] = [];
  await simulate(p, lines, { shards: data.shardIds.length, onOutput: (o) => outputs.push(o) });
  return outputs;
}

/** The final item per key of an upsert sink: the last output per key (outputs of one key are on one shard, in order). */
function lastPerKey(outputs: readonly Output[], sink: string, key: readonly string[]): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const o of outputs) {
    if (o.sink !== sink) continue;
    const v = o.value as Record<string, unknown>;
    out.set(key.map((k) => String(v[k])).join('|'), v);
  }
  return out;
}

/** A dead letter with its shard and sequence number replaced by indexes (they differ from simulate's). */
function normalizeDeadLetter(
  value: unknown,
  shardIndex: (shardId: string) => number,
  recordIndex: (shard: number, sequenceNumber: string) => number,
): string {
  const v = value as Record<string, unknown>;
  const shard = shardIndex(String(v.shardId));
  return JSON.stringify({
    ...v,
    shardId: shard,
    sequenceNumber: recordIndex(shard, String(v.sequenceNumber)),
  });
}

// ---------------------------------------------------------------------------------------------
// Actual results: the sinks' contents

async function scanTable(table: string, key: readonly string[]): Promise<Map<string, unknown>> {
  const out = new Map<string, unknown>();
  let start: Record<string, unknown> | undefined;
  do {
    const res = await admin.ddb.send(new ScanCommand({ TableName: table, ExclusiveStartKey: start }));
    for (const item of res.Items ?? []) {
      const { floeOutputId: _id, floeOrder: _order, floeRank: _rank, ...value } = item;
      const k = key.map((name) => String(value[name])).join('|');
      if (out.has(k)) throw new Error(`table ${table} has key ${k} twice`);
      out.set(k, value);
    }
    start = res.LastEvaluatedKey;
  } while (start !== undefined);
  return out;
}

/** Every `{"id","value"}` line of the NDJSON objects under a prefix; fails on an id with two values. */
async function s3Lines(s3: S3Client, prefix: string): Promise<Map<string, unknown>> {
  const byId = new Map<string, string>();
  for (const body of (await readObjects(s3, bucket, prefix)).values()) {
    for (const line of body.split('\n')) {
      if (line.trim() === '') continue;
      const { id, value } = JSON.parse(line) as { id: string; value: unknown };
      const text = JSON.stringify(value);
      const before = byId.get(id);
      if (before !== undefined && before !== text)
        throw new Error(`output ${id} has two values: ${before} / ${text}`);
      byId.set(id, text);
    }
  }
  return new Map([...byId].map(([id, text]) => [id, JSON.parse(text) as unknown]));
}

/** The first few differences between two maps, or undefined when equal. */
function mapDifference(actual: ReadonlyMap<string, unknown>, expected: ReadonlyMap<string, unknown>) {
  const problems: string[] = [];
  for (const [k, v] of expected) {
    const a = actual.get(k);
    if (JSON.stringify(a) !== JSON.stringify(v))
      problems.push(`${k}: got ${JSON.stringify(a)}, expected ${JSON.stringify(v)}`);
  }
  for (const k of actual.keys())
    if (!expected.has(k)) problems.push(`${k}: unexpected ${JSON.stringify(actual.get(k))}`);
  return problems.length === 0
    ? undefined
    : `${problems.length} differences (${actual.size} actual, ${expected.size} expected), e.g. ${problems.slice(0, 5).join('; ')}`;
}

const sortedJson = (values: readonly unknown[]): string[] => values.map((v) => JSON.stringify(v)).sort();

// ---------------------------------------------------------------------------------------------
// One job run

interface Sinks {
  /** The upsert sink: name, table key attributes (string hash, number range). */
  readonly upsert: { readonly sink: string; readonly hash: string; readonly range: string };
  readonly late?: string;
}

interface FaultRates {
  readonly kinesis: number;
  readonly dynamodb: number;
  readonly s3: number;
  /** Fraction of the faults thrown after the call took effect. */
  readonly ambiguous: number;
}

interface RunOptions {
  readonly faults?: FaultRates;
  /** Records per batch. @default BATCH */
  readonly batchSize?: number;
}

interface BodyLike {
  readonly readableEnded?: boolean;
  destroy?(): void;
  on?(event: 'error', listener: () => void): unknown;
}

/**
 * Records the streaming response bodies (S3 GetObject) the client returns, inside the fault
 * middleware, so that `release()` can destroy those nobody read: the bodies of calls the fault
 * injector made ambiguous (it drops them unread, see faults-ambiguous.test.ts). Without this,
 * destroying the client aborts their sockets and the unread bodies throw `Error: aborted`.
 */
function trackBodies(client: { middlewareStack: unknown }): { release(): void } {
  const bodies: BodyLike[] = [];
  (
    client.middlewareStack as {
      add(
        mw: (
          next: (a: unknown) => Promise<{ output?: { Body?: BodyLike } }>,
        ) => (a: unknown) => Promise<unknown>,
        o: object,
      ): void;
    }
  ).add(
    (next) => async (args) => {
      const result = await next(args);
      const body = result.output?.Body;
      if (body?.destroy !== undefined) bodies.push(body);
      return result;
    },
    { step: 'initialize', name: 'e2eTrackBodies', priority: 'low' },
  );
  return {
    release() {
      for (const b of bodies) {
        if (b.readableEnded) continue;
        b.on?.('error', () => {});
        b.destroy?.();
      }
    },
  };
}

let runs = 0;

async function runPipeline(p: Pipeline, data: StreamData, sinks: Sinks, options: RunOptions = {}) {
  const n = ++runs;
  const job = `e2e-${n}-${Date.now().toString(36)}`;
  const stateTable = uniqueName(`e2e-state-${n}`);
  const controlTable = uniqueName(`e2e-control-${n}`);
  const upsertTable = uniqueName(`e2e-${sinks.upsert.sink}`);
  await Promise.all([
    createTables(admin.dynamodb, stateTable, controlTable),
    createUpsertTable(admin.dynamodb, upsertTable, sinks.upsert.hash, sinks.upsert.range),
  ]);
  const prefixes = {
    dead: `dead-letters/${job}/`,
    late: `late/${job}/`,
    fallback: `outputs/${job}/`,
  };
  const specs = [
    `${sinks.upsert.sink}=dynamodb:${upsertTable}?key=${sinks.upsert.hash},${sinks.upsert.range}`,
    `${DEAD_LETTER_SINK}=s3:${bucket}/${prefixes.dead}`,
    ...(sinks.late !== undefined ? [`${sinks.late}=s3:${bucket}/${prefixes.late}`] : []),
  ];
  // The job's own clients (the faults go on these only).
  const bundle = jobClients(env);
  const { kinesis, dynamodb, s3 } = bundle;
  const s3Bodies = trackBodies(s3);
  const injectors: Record<string, FaultInjector> = {};
  if (options.faults) {
    const { ambiguous } = options.faults;
    injectors.kinesis = injectTransientFaults(kinesis, { rate: options.faults.kinesis, ambiguous, seed: 11 });
    injectors.dynamodb = injectTransientFaults(dynamodb, {
      rate: options.faults.dynamodb,
      ambiguous,
      seed: 12,
    });
    injectors.s3 = injectTransientFaults(s3, { rate: options.faults.s3, ambiguous, seed: 13 });
  }
  const runtime = openAwsJob(
    compile(p),
    { job, stream: data.stream, stateTable, controlTable, bucket, sinks: specs },
    bundle,
  );
  const t0 = performance.now();
  let summary: Awaited<ReturnType<typeof runJob>>;
  let leaseBusy = 0;
  try {
    summary = await runJob(
      { ...runtime, clock: () => data.drainAt },
      {
        owner: `e2e-${n}`,
        untilIdle: true,
        batchSize: options.batchSize ?? BATCH,
        leaseTtlMs: 60_000,
        idlePollMs: 1,
        roundPauseMs: 20,
        onLeaseBusy: () => {
          leaseBusy++;
        },
      },
    );
  } finally {
    for (const i of Object.values(injectors)) i.remove();
    s3Bodies.release();
    bundle.destroy();
  }
  const seconds = (performance.now() - t0) / 1000;
  const actual = {
    upsert: await scanTable(upsertTable, [sinks.upsert.hash, sinks.upsert.range]),
    dead: await s3Lines(admin.s3, prefixes.dead),
    late: await s3Lines(admin.s3, prefixes.late),
    fallback: await s3Lines(admin.s3, prefixes.fallback),
  };
  console.log(
    `[end-to-end] ${p.name} on ${data.stream}: ${summary.records} records, ${summary.commits} commits, ${summary.rounds} rounds in ${seconds.toFixed(1)} s; ` +
      `backend ${JSON.stringify(runtime.backend.metrics)}; ${leaseBusy} worker restarts` +
      (options.faults
        ? `; faults injected (calls that failed / calls): ${Object.entries(injectors)
            .map(
              ([k, i]) =>
                `${k} ${i.stats.injected}/${i.stats.calls} (${i.stats.ambiguous} after the call took effect)`,
            )
            .join(', ')}`
        : ''),
  );
  return { actual, injectors, summary, backend: runtime.backend };
}

async function expectExact(
  p: Pipeline,
  data: StreamData,
  sinks: Sinks,
  actual: Awaited<ReturnType<typeof runPipeline>>['actual'],
) {
  const expected = await simulated(p, data);
  const key = [sinks.upsert.hash, sinks.upsert.range];
  const expectedUpserts = lastPerKey(expected, sinks.upsert.sink, key);
  expect(expectedUpserts.size).toBeGreaterThan(1000);
  expect(
    mapDifference(actual.upsert, expectedUpserts),
    `${sinks.upsert.sink} table vs simulate`,
  ).toBeUndefined();

  // Dead letters: same letters, with shard and record position as indexes.
  const positions = data.records.map((list) => new Map(list.map((r, i) => [r.sequenceNumber, i])));
  const actualDead = [...actual.dead.values()].map((v) =>
    normalizeDeadLetter(
      v,
      (id) => data.shardIds.indexOf(id),
      (shard, seq) => positions[shard]?.get(seq) ?? -1,
    ),
  );
  const expectedDead = expected
    .filter((o) => o.sink === DEAD_LETTER_SINK)
    .map((o) =>
      normalizeDeadLetter(
        o.value,
        (id) => Array.from({ length: data.shardIds.length }, (_, i) => shardName(i)).indexOf(id),
        (_shard, seq) => Number(seq) - 1,
      ),
    );
  expect(actualDead.sort(), 'dead letters vs simulate').toEqual(expectedDead.sort());

  if (sinks.late !== undefined) {
    const expectedLate = expected.filter((o) => o.sink === sinks.late).map((o) => o.value);
    expect(expectedLate.length).toBeGreaterThan(10);
    expect(sortedJson([...actual.late.values()]), 'late data vs simulate').toEqual(sortedJson(expectedLate));
  }
  expect([...actual.fallback.keys()], 'nothing went to the fallback sink').toEqual([]);
  return {
    expected,
    deadReasons: countBy([...actual.dead.values()], (v) => String((v as { reason: string }).reason)),
  };
}

function countBy<T>(items: readonly T[], key: (t: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return out;
}

const poisonCount = (events: number) => {
  let invalid = 0;
  let noTimestamp = 0;
  for (let n = 0; n < events; n++) {
    if (n % POISON_EVERY !== POISON_EVERY / 2) continue;
    if ((n / POISON_EVERY) % 2 < 1) invalid++;
    else noTimestamp++;
  }
  return { invalid, noTimestamp };
};

// ---------------------------------------------------------------------------------------------

const PAGE_SINKS: Sinks = {
  upsert: { sink: 'page-view-counts', hash: 'page', range: 'windowStart' },
  late: 'late-page-views',
};
const SESSION_SINKS: Sinks = { upsert: { sink: 'sessions', hash: 'user', range: 'start' } };

/**
 * ~10 % of all AWS calls fail. The job makes few Kinesis calls (25 on the fault stream: a
 * GetRecords returns a shard's aggregates in one or two calls), so Kinesis gets 25 % to see a
 * handful of faults; DynamoDB (~6,500 calls) and S3 get 10 %. A fifth of the faults are
 * ambiguous: thrown after the call took effect.
 */
const FAULTS: FaultRates = { kinesis: 0.25, dynamodb: 0.1, s3: 0.1, ambiguous: 0.2 };

describe('end to end: Kinesis -> floe (DynamoDB + S3) -> DynamoDB and S3 sinks', () => {
  it('the streams hold what was produced: 4 shards, >= 50,000 events, >= 1,000 keys (the fault stream 15,000)', () => {
    for (const [data, events] of [
      [pageStream, EVENTS],
      [sessionStream, EVENTS],
      [faultStream, FAULT_EVENTS],
    ] as const) {
      expect(data.shardIds.length).toBe(SHARDS);
      const read = data.records.flat();
      expect(read.length).toBe(data.produced.length);
      expect(read.length).toBeGreaterThanOrEqual(events);
      expect(data.keys).toBeGreaterThanOrEqual(1000);
      expect(Math.min(...data.records.map((r) => r.length))).toBeGreaterThan(events / 10);
      // Same multiset of payloads as produced (per-key order: kept by construction).
      expect(read.map((r) => r.text).sort()).toEqual(data.produced.map((r) => r.text).sort());
      console.log(
        `[end-to-end] ${data.stream}: ${read.length} user records in ${data.kinesisRecords} Kinesis records, ${data.keys} keys, per shard ${data.records.map((r) => r.length).join('/')}`,
      );
    }
  });

  it('page-views example: page-view-counts in DynamoDB, dead letters and late data in S3 equal simulate', async () => {
    const { actual } = await runPipeline(pageViews, pageStream, PAGE_SINKS);
    const { deadReasons } = await expectExact(pageViews, pageStream, PAGE_SINKS, actual);
    const { invalid, noTimestamp } = poisonCount(EVENTS);
    expect(deadReasons).toEqual({ deserialize: invalid, timestamp: noTimestamp });
  }, 300_000);

  it('user-sessions example: sessions in DynamoDB (keyed by user + start) and dead letters in S3 equal simulate', async () => {
    const { actual } = await runPipeline(userSessions, sessionStream, SESSION_SINKS);
    const { deadReasons, expected } = await expectExact(userSessions, sessionStream, SESSION_SINKS, actual);
    const { invalid, noTimestamp } = poisonCount(EVENTS);
    expect(deadReasons).toEqual({ deserialize: invalid, timestamp: noTimestamp });
    // More sessions than users: sessions end and start again.
    const users = new Set(
      expected.filter((o) => o.sink === 'sessions').map((o) => (o.value as { user: string }).user),
    );
    expect(actual.upsert.size).toBeGreaterThan(users.size);
  }, 300_000);

  it('throttling and transient errors on ~10 % of the AWS calls, on all three clients (strict pipeline: a map function throws for one page): exact', async () => {
    const { actual, injectors } = await runPipeline(strictPageViews, faultStream, PAGE_SINKS, {
      faults: FAULTS,
      batchSize: FAULT_BATCH,
    });
    let calls = 0;
    let injected = 0;
    for (const [client, injector] of Object.entries(injectors)) {
      expect(injector.stats.injected, `faults injected on ${client}`).toBeGreaterThan(0);
      calls += injector.stats.calls;
      injected += injector.stats.injected;
    }
    expect(injected / calls).toBeGreaterThan(0.08);
    expect(injected / calls).toBeLessThan(0.13);
    const { deadReasons } = await expectExact(strictPageViews, faultStream, PAGE_SINKS, actual);
    const { invalid, noTimestamp } = poisonCount(FAULT_EVENTS);
    expect(deadReasons).toEqual({
      deserialize: invalid,
      timestamp: noTimestamp,
      'user-function': FAULT_EVENTS / BOOM_EVERY,
    });
  }, 300_000);
});
