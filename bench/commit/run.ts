/**
 * Commit-cost benchmark on the emulators (kinesis-local for Kinesis, moto for DynamoDB and S3;
 * started here with infra-tests/env/environment.ts, or the endpoints in AWS_ENDPOINT_URL*):
 *
 *   npx tsx bench/commit/run.ts
 *
 * Three consumers of the same Kinesis stream of page views (BENCH_EVENTS events over BENCH_KEYS
 * pages, partitioned by page, 4 shards), measured in the same run:
 *
 * - floe: examples/page-views.ts (1-minute tumbling counts per page) through runJob with the
 *   wiring of openAwsJob: DynamoBackend (state, checkpoints, outbox; S3 deltas for commits over
 *   100 actions) and the page-view-counts sink bound to a DynamoDB table (upsert by page +
 *   windowStart), dead letters and late data to S3.
 * - naive: one UpdateItem `ADD views :1` per event on (page, windowStart), reading the stream
 *   with a GetRecords loop (no exactly-once, no windows firing, no late-data handling).
 * - raw: a GetRecords loop over the stream that only de-aggregates and counts (the read ceiling).
 *
 * Reported: DynamoDB write requests and approximate write units (WCU: 1 per started KB of each
 * item written, 2x inside TransactWriteItems; updates and deletes are charged the item's last
 * known size) per 1,000 events, counted by a middleware on the DynamoDB client for every write
 * call (DynamoBackend.metrics is printed too; it counts the commit writes only), and end-to-end
 * events/s of floe vs the raw loop.
 *
 * Sizes. kinesis-local spends time proportional to a shard's length on every put (~6 ms per
 * record at 6,500 records per shard), so the producer KPL-aggregates 100 user records per Kinesis
 * record: 100,000 events are ~1,000 Kinesis records. The naive baseline is bound by moto (~5 ms
 * per UpdateItem, ~10 minutes for 100,000), so it runs over the first BENCH_NAIVE_EVENTS events
 * of the same stream (default 20,000): its cost per event does not depend on the size (exactly
 * one request and one ~60-byte item per event), floe's falls as batches get more events per key.
 *
 * Environment: BENCH_EVENTS (default 100,000), BENCH_NAIVE_EVENTS (default 20,000),
 * BENCH_KEYS (default 1,000), BENCH_BATCH (records per floe batch, default 10,000),
 * BENCH_COMMIT_INTERVAL_MS (the worker's commit interval, default 1,000 as deployed; 0 commits
 * after every read),
 * BENCH_DELTA_APPLY (DynamoBackendOptions.deltaApply, `items` or `transactions`; default: the
 * backend's default), BENCH_UPSERT_ORDERED (`false`: the sink binding's `ordered=false`, one
 * BatchWriteItem per 25 results instead of a conditional PutItem per result; default true, as
 * deployed). The load average (os.loadavg) is printed before and after floe's run: the
 * figures are only comparable on an otherwise idle machine.
 */
import { availableParallelism, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { type DynamoDBClient, ResourceInUseException, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import {
  GetRecordsCommand,
  GetShardIteratorCommand,
  type KinesisClient,
  type _Record as KinesisRecord,
} from '@aws-sdk/client-kinesis';
import pageViews from '../../examples/page-views.ts';
import { jobClients } from '../../infra-tests/aws/job-clients.ts';
import { kplEntries } from '../../infra-tests/aws/kpl-entries.ts';
import { createUpsertTable } from '../../infra-tests/aws/upsert-tables.ts';
import { startAwsTestEnv } from '../../infra-tests/env/environment.ts';
import { DELTA_APPLY_MODES, type DeltaApplyMode, mapLimit } from '../../lib/aws/dynamodb-backend.ts';
import { openAwsJob } from '../../lib/aws/job.ts';
import { KinesisSource, putRecords } from '../../lib/aws/kinesis-source.ts';
import { deaggregate } from '../../lib/aws/kpl.ts';
import { createBucket, createStream, createTables } from '../../lib/aws/resources.ts';
import { compile, DEAD_LETTER_SINK } from '../../lib/core/index.ts';
import { clickstream } from '../../lib/runtime/clickstream.ts';
import { runJob } from '../../lib/runtime/local-runner.ts';
import { envInt } from '../env.ts';

const EVENTS = envInt('BENCH_EVENTS', 100_000);
const NAIVE_EVENTS = Math.min(EVENTS, envInt('BENCH_NAIVE_EVENTS', 20_000));
const KEYS = envInt('BENCH_KEYS', 1_000);
const BATCH = envInt('BENCH_BATCH', 10_000);
/** The worker's commit interval; 1 s is the StreamProcessor construct's default. */
const COMMIT_INTERVAL_MS = envInt('BENCH_COMMIT_INTERVAL_MS', 1_000, 0);
const DELTA_APPLY = deltaApplyFromEnv();
const UPSERT_ORDERED = upsertOrderedFromEnv();
const SHARDS = 4;
const AGGREGATE = 100;

function deltaApplyFromEnv(): DeltaApplyMode | undefined {
  const raw = process.env.BENCH_DELTA_APPLY;
  if (raw === undefined || raw === '') return undefined;
  if (!DELTA_APPLY_MODES.includes(raw as DeltaApplyMode)) {
    throw new Error(`BENCH_DELTA_APPLY must be one of ${DELTA_APPLY_MODES.join(', ')}; got ${raw}`);
  }
  return raw as DeltaApplyMode;
}

function upsertOrderedFromEnv(): boolean {
  const raw = process.env.BENCH_UPSERT_ORDERED;
  if (raw === undefined || raw === '' || raw === 'true') return true;
  if (raw === 'false') return false;
  throw new Error(`BENCH_UPSERT_ORDERED must be true or false; got ${raw}`);
}

const load = (): string =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');

// ---------------------------------------------------------------------------------------------
// Write accounting: requests and approximate WCU of every DynamoDB write call

type AttributeValue = Record<string, unknown>;

function valueSize(v: AttributeValue): number {
  if (typeof v.S === 'string') return Buffer.byteLength(v.S);
  if (typeof v.N === 'string') return Math.ceil(v.N.replace(/[^0-9]/g, '').length / 2) + 1;
  if (v.B !== undefined) return (v.B as Uint8Array).length ?? 0;
  if (v.BOOL !== undefined || v.NULL !== undefined) return 1;
  if (Array.isArray(v.L)) return 3 + (v.L as AttributeValue[]).reduce((n, x) => n + 1 + valueSize(x), 0);
  if (v.M !== undefined) {
    return (
      3 +
      Object.entries(v.M as Record<string, AttributeValue>).reduce(
        (n, [k, x]) => n + 1 + Buffer.byteLength(k) + valueSize(x),
        0,
      )
    );
  }
  if (Array.isArray(v.SS)) return (v.SS as string[]).reduce((n, s) => n + Buffer.byteLength(s), 0);
  if (Array.isArray(v.NS)) return (v.NS as string[]).reduce((n, s) => n + s.length, 0);
  return 0;
}

function itemSize(item: Record<string, AttributeValue> | undefined): number {
  if (item === undefined) return 0;
  let size = 0;
  for (const [name, v] of Object.entries(item)) size += Buffer.byteLength(name) + valueSize(v);
  return size;
}

const units = (bytes: number): number => Math.max(1, Math.ceil(bytes / 1024));

interface Tally {
  requests: number;
  items: number;
  wcu: number;
}

class WriteMeter {
  /** Per category (state, control, sink, naive): writes. */
  readonly tallies = new Map<string, Tally>();
  /** Last known size of each item, for updates and deletes. */
  private readonly sizes = new Map<string, number>();
  enabled = true;

  constructor(private readonly category: (table: string, sortKey: string | undefined) => string) {}

  attach(client: DynamoDBClient): void {
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (this.enabled) this.record(context.commandName ?? '', args.input as Record<string, unknown>);
        return next(args);
      },
      // After serialization's DocumentMarshall: the input is in AttributeValue form.
      { step: 'build', name: 'benchWriteMeter', priority: 'high' },
    );
  }

  total(filter: (category: string) => boolean = () => true): Tally {
    const sum = { requests: 0, items: 0, wcu: 0 };
    for (const [c, t] of this.tallies) {
      if (!filter(c)) continue;
      sum.requests += t.requests;
      sum.items += t.items;
      sum.wcu += t.wcu;
    }
    return sum;
  }

  private tally(table: string, keyAttrs?: unknown): Tally {
    const sk = (keyAttrs as { sk?: { S?: string } } | undefined)?.sk?.S;
    const c = this.category(table, sk);
    let t = this.tallies.get(c);
    if (t === undefined) {
      t = { requests: 0, items: 0, wcu: 0 };
      this.tallies.set(c, t);
    }
    return t;
  }

  private record(command: string, input: Record<string, unknown>): void {
    switch (command) {
      case 'PutItemCommand':
      case 'UpdateItemCommand':
      case 'DeleteItemCommand': {
        const t = this.tally(String(input.TableName), input.Key ?? input.Item);
        t.requests++;
        t.items++;
        t.wcu += units(this.size(command, input));
        return;
      }
      case 'BatchWriteItemCommand': {
        const requestItems = input.RequestItems as Record<string, Array<Record<string, unknown>>>;
        let first = true;
        for (const [table, writes] of Object.entries(requestItems)) {
          const t = this.tally(table);
          if (first) t.requests++;
          first = false;
          for (const w of writes) {
            const put = w.PutRequest as { Item: Record<string, AttributeValue> } | undefined;
            const del = w.DeleteRequest as { Key: Record<string, AttributeValue> } | undefined;
            t.items++;
            t.wcu += units(
              put !== undefined
                ? this.size('PutItemCommand', { TableName: table, Item: put.Item })
                : this.size('DeleteItemCommand', { TableName: table, Key: del?.Key }),
            );
          }
        }
        return;
      }
      case 'TransactWriteItemsCommand': {
        const actions = input.TransactItems as Array<Record<string, Record<string, unknown>>>;
        let first = true;
        for (const action of actions) {
          const [kind, op] = Object.entries(action)[0]!;
          const t = this.tally(String(op.TableName), op.Key ?? op.Item);
          if (first) t.requests++;
          first = false;
          t.items++;
          const command = `${kind === 'ConditionCheck' ? 'Update' : kind}ItemCommand`;
          t.wcu += 2 * units(this.size(command, op));
        }
        return;
      }
      default:
    }
  }

  /** The item's size after the write (updates: at least its last known size), remembered. */
  private size(command: string, input: Record<string, unknown>): number {
    const table = String(input.TableName);
    const item = input.Item as Record<string, AttributeValue> | undefined;
    const keyAttrs = (input.Key as Record<string, AttributeValue> | undefined) ?? item;
    const key = `${table}\u0000${JSON.stringify(this.keyOf(keyAttrs))}`;
    if (command === 'PutItemCommand') {
      const size = itemSize(item);
      this.sizes.set(key, size);
      return size;
    }
    const known = this.sizes.get(key) ?? 0;
    if (command === 'DeleteItemCommand') {
      this.sizes.delete(key);
      return known;
    }
    const values = input.ExpressionAttributeValues as Record<string, AttributeValue> | undefined;
    const written = itemSize(input.Key as Record<string, AttributeValue>) + itemSize(values);
    const size = Math.max(known, written);
    this.sizes.set(key, size);
    return size;
  }

  private keyOf(attrs: Record<string, AttributeValue> | undefined): unknown {
    if (attrs === undefined) return null;
    // pk / sk for the backend tables; the sinks' own key attributes otherwise.
    const names = ['pk', 'sk', 'page', 'windowStart'].filter((n) => attrs[n] !== undefined);
    return names.map((n) => attrs[n]);
  }
}

// ---------------------------------------------------------------------------------------------
// Data

interface View {
  readonly page: string;
  readonly user: string;
  readonly ts: number;
}

// ---------------------------------------------------------------------------------------------
// Consumers

/** Reads every shard from TRIM_HORIZON with GetRecords until caught up; calls `onRecords` per response. */
async function getRecordsLoop(
  kinesis: KinesisClient,
  stream: string,
  shardIds: readonly string[],
  onRecords: (records: KinesisRecord[]) => Promise<boolean | undefined> | boolean | undefined,
): Promise<{ calls: number }> {
  let calls = 0;
  await Promise.all(
    shardIds.map(async (ShardId) => {
      let iterator = (
        await kinesis.send(
          new GetShardIteratorCommand({ StreamName: stream, ShardId, ShardIteratorType: 'TRIM_HORIZON' }),
        )
      ).ShardIterator;
      while (iterator !== undefined) {
        calls++;
        const out = await kinesis.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 10_000 }));
        const records = out.Records ?? [];
        if ((await onRecords(records)) === false) return;
        if (records.length === 0 && (out.MillisBehindLatest ?? 0) === 0) return;
        iterator = out.NextShardIterator;
      }
    }),
  );
  return { calls };
}

function userRecords(r: KinesisRecord): Uint8Array[] {
  const data = r.Data ?? new Uint8Array(0);
  const users = deaggregate(data);
  return users === undefined ? [data] : users.map((u) => u.data);
}

// ---------------------------------------------------------------------------------------------

const fmt = (n: number, digits = 0): string =>
  n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

async function main(): Promise<void> {
  const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
  const started = await startAwsTestEnv(repoRoot, (m) => console.error(m));
  const env = started.env;
  const clients = jobClients(env, { requestTimeoutMs: 60_000 });
  const suffix = `${Date.now().toString(36)}`;
  const names = {
    stream: `bench-commit-${suffix}`,
    state: `bench-state-${suffix}`,
    control: `bench-control-${suffix}`,
    counts: `bench-counts-${suffix}`,
    naive: `bench-naive-${suffix}`,
    bucket: `bench-commit-${suffix}`,
  };
  const meter = new WriteMeter((table, sk) =>
    table === names.state
      ? 'floe state'
      : table === names.control
        ? sk?.startsWith('out#')
          ? 'floe outbox'
          : 'floe lease'
        : table === names.counts
          ? 'floe sink'
          : table === names.naive
            ? 'naive'
            : table,
  );
  meter.attach(clients.dynamodb);
  try {
    console.log(`floe commit benchmark: ${env.description}`);
    console.log(
      `events ${fmt(EVENTS)} (naive baseline: first ${fmt(NAIVE_EVENTS)}), ${fmt(KEYS)} pages (keys), ${SHARDS} shards, floe batch ${fmt(BATCH)}, commit interval ${fmt(COMMIT_INTERVAL_MS)} ms\n`,
    );

    // Resources and data (not timed).
    meter.enabled = false;
    await createStream(clients.kinesis, names.stream, SHARDS);
    await Promise.all([
      createTables(clients.dynamodb, names.state, names.control),
      createBucket(clients.s3, names.bucket),
      ...[names.counts, names.naive].map((table) =>
        createUpsertTable(clients.dynamodb, table, 'page', 'windowStart').catch((e: unknown) => {
          if (!(e instanceof ResourceInUseException)) throw e;
        }),
      ),
    ]);
    meter.enabled = true;
    const views: View[] = [...clickstream({ events: EVENTS, pages: KEYS, users: 5_000, seed: 7 })];
    const source = new KinesisSource({ client: clients.kinesis, stream: names.stream });
    const shards = await source.listShards();
    const shardIds = shards.map((s) => s.shardId).sort();
    const toPut = kplEntries(
      views.map((v) => ({ partitionKey: v.page, data: JSON.stringify(v) })),
      shards,
      AGGREGATE,
    );
    let t0 = performance.now();
    await putRecords(clients.kinesis, names.stream, toPut);
    const putSeconds = (performance.now() - t0) / 1000;
    console.log(
      `stream: ${fmt(EVENTS)} events in ${fmt(toPut.length)} Kinesis records (KPL aggregates of up to ${AGGREGATE}), ` +
        `${new Set(views.map((v) => v.page)).size} distinct pages, put in ${putSeconds.toFixed(1)} s`,
    );

    // Raw GetRecords loop (the read ceiling); run before and after floe, best of the two.
    const raw = async () => {
      let events = 0;
      const t = performance.now();
      const { calls } = await getRecordsLoop(clients.kinesis, names.stream, shardIds, (records) => {
        for (const r of records) events += userRecords(r).length;
        return undefined;
      });
      return { events, calls, seconds: (performance.now() - t) / 1000 };
    };
    const raw1 = await raw();

    // floe.
    const plan = compile(pageViews);
    const runtime = openAwsJob(
      plan,
      {
        job: `bench-${suffix}`,
        stream: names.stream,
        stateTable: names.state,
        controlTable: names.control,
        bucket: names.bucket,
        sinks: [
          `page-view-counts=dynamodb:${names.counts}?key=page,windowStart${UPSERT_ORDERED ? '' : '&ordered=false'}`,
          `${DEAD_LETTER_SINK}=s3:${names.bucket}/dead-letters/`,
          `late-page-views=s3:${names.bucket}/late/`,
        ],
        ...(DELTA_APPLY === undefined ? {} : { deltaApply: DELTA_APPLY }),
      },
      clients,
    );
    // Final windows fire when a caught-up shard is idle past the timeout: run "a day later"
    // (a clock that still advances with wall time, which the commit interval is measured in).
    const lastArrival = Date.now();
    const loadBefore = load();
    t0 = performance.now();
    const wallStart = Date.now();
    const summary = await runJob(
      { ...runtime, clock: () => lastArrival + 86_400_000 + (Date.now() - wallStart) },
      {
        owner: 'bench',
        untilIdle: true,
        batchSize: BATCH,
        commitIntervalMs: COMMIT_INTERVAL_MS,
        leaseTtlMs: 60_000,
        idlePollMs: 1,
        roundPauseMs: 20,
      },
    );
    const floeSeconds = (performance.now() - t0) / 1000;
    const loadAfter = load();
    const floeWrites = meter.total((c) => c.startsWith('floe'));
    const byCategory = [
      ['floe state', 'state (keyed state items)'],
      ['floe lease', 'lease item (lease, checkpoint + timers)'],
      ['floe outbox', 'outbox (put, then deleted when published)'],
      ['floe sink', 'sink (page-view-counts upserts)'],
    ].map(([c, label]) => [label!, meter.tallies.get(c!)] as const);

    const raw2 = await raw();
    const rawBest = raw1.seconds <= raw2.seconds ? raw1 : raw2;

    // Naive: one UpdateItem ADD per event.
    let naiveEvents = 0;
    t0 = performance.now();
    await getRecordsLoop(clients.kinesis, names.stream, shardIds, async (records) => {
      const batch: View[] = [];
      for (const r of records) {
        for (const data of userRecords(r)) {
          if (naiveEvents >= NAIVE_EVENTS) break;
          naiveEvents++;
          try {
            batch.push(JSON.parse(new TextDecoder().decode(data)) as View);
          } catch {
            // skip
          }
        }
      }
      await mapLimit(batch, 8, async (v) => {
        await clients.dynamodb.send(
          new UpdateItemCommand({
            TableName: names.naive,
            Key: { page: { S: v.page }, windowStart: { N: String(Math.floor(v.ts / 60_000) * 60_000) } },
            UpdateExpression: 'ADD #views :one',
            ExpressionAttributeNames: { '#views': 'views' },
            ExpressionAttributeValues: { ':one': { N: '1' } },
          }),
        );
      });
      return naiveEvents < NAIVE_EVENTS;
    });
    const naiveSeconds = (performance.now() - t0) / 1000;
    const naive = meter.tallies.get('naive') ?? { requests: 0, items: 0, wcu: 0 };

    // Report.
    const per1k = (n: number, events: number) => (n * 1000) / events;
    const rows: string[][] = [
      [
        'consumer',
        'events',
        'write requests',
        'per 1k events',
        'items written',
        'WCU (approx)',
        'WCU per 1k',
        'wall s',
        'events/s',
      ],
      [
        'floe (runJob, DynamoBackend + sink)',
        fmt(EVENTS),
        fmt(floeWrites.requests),
        fmt(per1k(floeWrites.requests, EVENTS), 1),
        fmt(floeWrites.items),
        fmt(floeWrites.wcu),
        fmt(per1k(floeWrites.wcu, EVENTS), 1),
        floeSeconds.toFixed(1),
        fmt(EVENTS / floeSeconds),
      ],
      ...byCategory.map(([label, t]) => [
        `  ${label}`,
        '',
        fmt(t?.requests ?? 0),
        fmt(per1k(t?.requests ?? 0, EVENTS), 1),
        fmt(t?.items ?? 0),
        fmt(t?.wcu ?? 0),
        fmt(per1k(t?.wcu ?? 0, EVENTS), 1),
        '',
        '',
      ]),
      [
        'naive (UpdateItem ADD per event)',
        fmt(naiveEvents),
        fmt(naive.requests),
        fmt(per1k(naive.requests, naiveEvents), 1),
        fmt(naive.items),
        fmt(naive.wcu),
        fmt(per1k(naive.wcu, naiveEvents), 1),
        naiveSeconds.toFixed(1),
        fmt(naiveEvents / naiveSeconds),
      ],
      [
        'raw GetRecords loop (read only)',
        fmt(rawBest.events),
        '-',
        '-',
        '-',
        '-',
        '-',
        rawBest.seconds.toFixed(2),
        fmt(rawBest.events / rawBest.seconds),
      ],
    ];
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    console.log('');
    for (const [i, r] of rows.entries()) {
      console.log(r.map((c, j) => (j === 0 ? c.padEnd(widths[j]!) : c.padStart(widths[j]!))).join('  '));
      if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
    }
    const ratio = (a: number, b: number) => (b === 0 ? 'n/a' : `${(a / b).toFixed(1)}x`);
    console.log('');
    console.log(
      `write requests per 1k events: naive / floe = ${ratio(per1k(naive.requests, naiveEvents), per1k(floeWrites.requests, EVENTS))}`,
    );
    console.log(
      `write units per 1k events:    naive / floe = ${ratio(per1k(naive.wcu, naiveEvents), per1k(floeWrites.wcu, EVENTS))}`,
    );
    console.log(
      `events/s: raw GetRecords / floe = ${ratio(rawBest.events / rawBest.seconds, EVENTS / floeSeconds)} (floe runs at ${((100 * (EVENTS / floeSeconds)) / (rawBest.events / rawBest.seconds)).toFixed(1)} % of the read ceiling); floe / naive = ${ratio(EVENTS / floeSeconds, naiveEvents / naiveSeconds)}`,
    );
    console.log('');
    console.log(
      `floe: ${fmt(summary.records)} records, ${summary.commits} commits, ${summary.rounds} runner rounds; DynamoBackend.metrics ${JSON.stringify(runtime.backend.metrics)}`,
    );
    console.log(
      `delta apply: ${DELTA_APPLY ?? 'default (items)'}; sink upserts: ${UPSERT_ORDERED ? 'ordered (conditional PutItem per result)' : 'ordered=false (BatchWriteItem)'}; load average (1, 5, 15 min) before floe's run ${loadBefore}, after ${loadAfter} (${availableParallelism()} CPUs)`,
    );
    console.log(
      `raw loop: ${fmt(raw1.events)} events in ${raw1.seconds.toFixed(2)} s and ${raw2.seconds.toFixed(2)} s (${raw1.calls} GetRecords calls)`,
    );
    console.log(
      'WCU model: 1 per started KB of each item written, x2 inside TransactWriteItems; UpdateItem/DeleteItem charged the item size last written (the lease item carries the checkpoint, timers included). The emulators do not meter capacity; these are computed from the requests.',
    );
  } finally {
    clients.destroy();
    await started.stop();
  }
}

await main();
