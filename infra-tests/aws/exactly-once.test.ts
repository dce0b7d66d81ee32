/**
 * The runtime's exactly-once suite (lib/runtime/testing/exactly-once.ts) over DynamoBackend +
 * S3 (moto) and KinesisSource (kinesis-local), once per commit path of DynamoBackend:
 *
 * - "TransactWriteItems commits": every commit has at most 100 actions and is one
 *   TransactWriteItems. Adapter fault point: before-transaction.
 * - "S3 delta commits": commits exceed the backend's maxTransactionActions (padded, see below)
 *   and take the S3 delta + commit point + apply path. Adapter fault points: after-delta-upload, after-commit-point, mid-apply, after-apply.
 *   Run with both apply variants (DynamoBackendOptions.deltaApply): the default, one conditional
 *   PutItem per item, and TransactWriteItems chunks (a subset: the fault-free run and crashes
 *   after the commit point and halfway through the apply, each followed by a redo).
 *
 * Batch size does not choose the path with the harness's data: it has 100 keys over 4 shards,
 * so a commit carries at most ~25 state mutations (one per key touched) however many records a
 * batch holds (measured: 21 items per commit at 500 records per batch). The delta fixtures
 * therefore lower the backend's `maxTransactionActions` and pad commits with inert state entries
 * to one action more (`padCommits`), which is what a commit over the limit looks like to
 * DynamoBackend; the limit of 100 itself is reached by the end-to-end test (250+ keys per commit).
 * Moto spends ~4 ms of its one core on each item written, so the fewer padding entries the better:
 * - Every commit on the delta path (the default): a limit of 1 action. Every commit that carries
 *   a state mutation or outputs takes the delta path as it is; one that carries only its
 *   checkpoint gets one padding entry.
 * - Both paths (`mixPaths`, the delta-path configuration of the fencing test and a crash test
 *   after the commit point): a limit of 32 actions, above any unpadded commit of this data, and
 *   three commits in four padded to 33: each shard's commits go delta, delta, delta, transaction,
 *   ..., so the runs also test the hand-over between the paths, e.g. a redo of a pending delta
 *   followed by a transaction commit. With FLOE_EO_FULL=1 every commit takes the delta path here
 *   too. Its batches of 50 records make twice the commits, so the crash test's margin holds.
 * The crash tests are why the others put every commit on the delta path: a crash test at
 * `dynamo.after-commit-point` needs the point's 7th occurrence, and a user-sessions run now makes
 * about 19 delta commits (measured: 228 over the 12 runs of the default configuration). Shards
 * commit concurrently, and a crash kills the other shards' commits in flight; one that had passed
 * its commit point reaches the point in the dead incarnation, where it is not an occurrence
 * (FaultInjector.at). So each of the crashes at occurrences 1, 2 and 4 can take up to 3
 * occurrences with it, and 19 - 9 still leaves the 7th. With three commits in four padded, a run
 * made 12 delta commits, and under load lost 4 to 5 of them that way: it reached the 7th only
 * just, or (once, in CI) not at all.
 *
 * Each configuration ends with a test that sums DynamoBackend.metrics over every backend its
 * fixtures opened, to show which path the commits took.
 *
 * Fixtures: each has its own Kinesis stream and its own state and control tables (deleted at
 * the end), a unique job id, and a shared bucket. Tables per fixture rather than shared: moto's
 * TransactWriteItems deep-copies the table once per action, so its cost grows with every item
 * an earlier fixture left in a shared table. Moto's transactions are also not isolated from
 * concurrent requests: see ./moto-transactions.ts. Arrival times and positions: see
 * ./kinesis-harness-stream.ts.
 *
 * What runs: the whole suite, twice, takes far longer than the infra project's budget on the
 * emulators (a run of a scenario takes 3-15 s here; the suite is 36 such tests per path, most of
 * them several runs). By default a subset runs (CONFIGS[].selection), 25 tests: the fault-free
 * runs vs simulate (both scenarios on the transaction path, user-sessions on the delta path), a
 * crash test at every fault point of each path (the 7 built-in ones and the path's adapter
 * points; spread over the two scenarios on the transaction path, all on user-sessions, the
 * cheaper scenario here, on the delta path), fencing on each path, and one resharding test
 * (split + merge mid-run, page-views, transaction path). Not run by default: the seeded
 * random-crash tests, the other resharding tests, and each fault point on the other scenario. FLOE_EO_FULL=1 runs every test of the harness on every configuration (except those
 * a configuration cannot run, `never`). FLOE_EO_MAX_CACHED_KEYS=N runs the workers with a state
 * cache of N keys per operator (WorkerOptions.maxCachedKeys; the memory suite runs with 8 by
 * default), so evicted keys are read back from DynamoDB through every fault point.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { DeltaApplyMode, DynamoBackend, DynamoCommitStep } from '../../lib/aws/dynamodb-backend.ts';
import { createBucket } from '../../lib/aws/resources.ts';
import type { Commit, Lease, StateMutation } from '../../lib/core/index.ts';
import {
  type Backend,
  describeExactlyOnce,
  type ExactlyOnceFactory,
} from '../../lib/runtime/testing/exactly-once.ts';
import { type AwsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { createTestStream, deleteTestStream } from '../env/kinesis-streams.ts';
import { createBackendTables } from './backend-tables.ts';
import { jobClients } from './job-clients.ts';
import { KinesisHarnessStream } from './kinesis-harness-stream.ts';

const env = await setupAwsTestEnv();
let clients: AwsClients;
const bucket = uniqueName('floe-eo');

beforeAll(async () => {
  clients = jobClients(env);
  await createBucket(clients.s3, bucket);
});
afterAll(() => clients?.destroy());

const TRANSACTION_STEPS: readonly DynamoCommitStep[] = ['before-transaction'];
const DELTA_STEPS: readonly DynamoCommitStep[] = [
  'after-delta-upload',
  'after-commit-point',
  'mid-apply',
  'after-apply',
];
const point = (step: DynamoCommitStep): string => `dynamo.${step}`;

/** Prefix of the inert state entries that pad commits onto the delta path (nothing reads them). */
const PADDING_PREFIX = 'floe-test-padding/';

/**
 * The delta fixtures' DynamoBackendOptions.maxTransactionActions (see the header): with both
 * paths in a run, and with every commit on the delta path.
 */
const MIXED_MAX_ACTIONS = 32;
const DELTA_ONLY_MAX_ACTIONS = 1;

/**
 * The backend, with the commits `pad` selects padded to `maxActions` + 1 actions by inert state
 * entries. The padding is a function of (shard, commit number), so a retried commit is the same
 * commit.
 */
function padCommits(
  backend: DynamoBackend,
  maxActions: number,
  pad: (commitNumber: number) => boolean,
): Backend {
  return {
    getMany: (addresses) => backend.getMany(addresses),
    acquireLease: (shardId, owner, now, ttlMs) => backend.acquireLease(shardId, owner, now, ttlMs),
    renewLease: (lease, now, ttlMs) => backend.renewLease(lease, now, ttlMs),
    releaseLease: (lease) => backend.releaseLease(lease),
    readCheckpoint: (shardId) => backend.readCheckpoint(shardId),
    listCheckpoints: () => backend.listCheckpoints(),
    unpublishedOutputs: (shardId) => backend.unpublishedOutputs(shardId),
    markPublished: (shardId, ids) => backend.markPublished(shardId, ids),
    commit: (lease: Lease, commit: Commit) => {
      const { shardId, commitNumber } = commit.checkpoint;
      if (!pad(commitNumber)) return backend.commit(lease, commit);
      const actions = 1 + (commit.outputs.length > 0 ? 1 : 0) + commit.mutations.length;
      const padding: StateMutation[] = Array.from(
        { length: Math.max(0, maxActions + 1 - actions) },
        (_, i) => ({ address: `${PADDING_PREFIX}${shardId}/${i}`, value: String(commitNumber) }),
      );
      return backend.commit(lease, { ...commit, mutations: [...commit.mutations, ...padding] });
    },
  };
}

interface Stats {
  readonly backends: DynamoBackend[];
  fixtures: number;
}

function totals(stats: Stats) {
  const sum = { transactions: 0, applyTransactions: 0, deltaCommits: 0, writeRequests: 0, itemsWritten: 0 };
  for (const b of stats.backends) {
    sum.transactions += b.metrics.transactions;
    sum.applyTransactions += b.metrics.applyTransactions;
    sum.deltaCommits += b.metrics.deltaCommits;
    sum.writeRequests += b.metrics.writeRequests;
    sum.itemsWritten += b.metrics.itemsWritten;
  }
  return sum;
}

const FULL = process.env.FLOE_EO_FULL === '1';
const MAX_CACHED_KEYS =
  process.env.FLOE_EO_MAX_CACHED_KEYS === undefined ? undefined : Number(process.env.FLOE_EO_MAX_CACHED_KEYS);
const EVENTS = 1000;

let fixtureCount = 0;

function dynamoKinesisFactory(
  stats: Stats,
  { path, deltaApply, mixPaths }: Pick<Config, 'path' | 'deltaApply' | 'mixPaths'>,
): ExactlyOnceFactory {
  return async ({ shards, faultHook }) => {
    const n = ++fixtureCount;
    stats.fixtures++;
    const [stream, tables] = await Promise.all([
      createTestStream(clients.kinesis, `eo-${n}`, shards),
      createBackendTables(clients, bucket, 'eo', n),
    ]);
    const deltaOnly = deltaOnlyPath(mixPaths);
    const maxActions = deltaOnly ? DELTA_ONLY_MAX_ACTIONS : MIXED_MAX_ACTIONS;
    const open = (): Backend => {
      const backend = tables.open({
        ...(deltaApply === undefined ? {} : { deltaApply }),
        ...(path === 'deltas' ? { maxTransactionActions: maxActions } : {}),
        onStep: (step) => faultHook(point(step), { step }),
        // The harness's processing time stands still while an incarnation runs and moves a lease
        // TTL on after a crash. A heartbeat measuring real time would keep a crashed incarnation's
        // lease for as long as it had run, and the next one could not take the shard (the delta
        // crash tests would time out); on a clock that stands still, heartbeats renew to the same
        // expiry and still find a takeover.
        clock: () => 0,
      });
      stats.backends.push(backend);
      // Every commit onto the delta path, or three in four with mixPaths (see the header); every
      // commit with FLOE_EO_FULL=1, so that page-views, with fewer commits, also reaches the 7th
      // occurrence of each delta step (the crash tests need 4 crashes: occurrences 1, 2, 4 and 7).
      return path === 'deltas' ? padCommits(backend, maxActions, (c) => deltaOnly || c % 4 !== 0) : backend;
    };
    return {
      backend: open(),
      reopen: () => open(),
      stream: new KinesisHarnessStream({ kinesis: clients.kinesis, stream }),
      async close() {
        await Promise.all([deleteTestStream(clients.kinesis, stream), tables.close()]);
      },
    };
  };
}

/** Whether a delta configuration puts every commit on the delta path (see the header). */
const deltaOnlyPath = (mixPaths: boolean | undefined): boolean => FULL || mixPaths !== true;
const padding = (mixPaths?: boolean): string =>
  deltaOnlyPath(mixPaths)
    ? `every commit over ${DELTA_ONLY_MAX_ACTIONS} action`
    : `3 commits in 4 padded over ${MIXED_MAX_ACTIONS} actions`;

const crash = (scenario: string, points: readonly string[]): RegExp[] =>
  points.map((p) => new RegExp(`> ${scenario} > crashes at ${p.replaceAll('.', '\\.')} \\(`));
const FENCING = /> fencing: /;

interface Config {
  readonly path: 'transactions' | 'deltas';
  /** DynamoBackendOptions.deltaApply of the delta path. @default the backend's default ('items') */
  readonly deltaApply?: DeltaApplyMode;
  /**
   * The delta path: every fourth commit takes the transaction path, so commits hand over between
   * the two (except with FLOE_EO_FULL=1). @default false: every commit takes the delta path (see
   * the header)
   */
  readonly mixPaths?: boolean;
  readonly title: string;
  readonly batchSize: number;
  readonly steps: readonly DynamoCommitStep[];
  readonly resharding: boolean;
  /** The tests that run by default, matched against the full test name. */
  readonly selection: readonly RegExp[];
  /** Tests this configuration cannot run (skipped even with FLOE_EO_FULL=1). */
  readonly never?: readonly RegExp[];
}

// The fencing scenario needs shard 0 (~250 of the 1000 records) to take at least four batches
// (worker A commits twice and stalls at its third; B commits once and pauses at its second), so
// it runs in its own configuration with 50-record batches; the others use larger batches, which
// make fewer commits and so cost less on moto.
const CONFIGS: readonly Config[] = [
  {
    path: 'transactions',
    title: 'TransactWriteItems commits (batch 100)',
    batchSize: 100,
    steps: TRANSACTION_STEPS,
    resharding: true,
    selection: [
      /> (page-views|user-sessions) > the fault-free run/,
      ...crash('page-views', ['source.read.after', 'checkpoint.commit.after', 'sink.publish.mid']),
      ...crash('user-sessions', [
        'checkpoint.acquireLease.after',
        'state.getMany',
        'checkpoint.commit.before',
        'checkpoint.markPublished.before',
        'dynamo.before-transaction',
      ]),
      /> resharding > page-views: split and merge mid-run/,
    ],
    never: [FENCING],
  },
  {
    path: 'transactions',
    title: 'TransactWriteItems commits, fencing (batch 50)',
    batchSize: 50,
    steps: TRANSACTION_STEPS,
    resharding: false,
    selection: [FENCING],
    never: [/^(?!.*> fencing: )/],
  },
  {
    path: 'deltas',
    title: `S3 delta commits (batch 500, ${padding()})`,
    batchSize: 500,
    steps: DELTA_STEPS,
    resharding: false,
    selection: [
      // page-views runs only through the transaction path here (the end-to-end test runs it
      // through the delta path at scale: 250+ keys per commit).
      /> user-sessions > the fault-free run/,
      ...crash('user-sessions', [
        'dynamo.after-delta-upload',
        'dynamo.after-commit-point',
        'dynamo.mid-apply',
        'dynamo.after-apply',
        'checkpoint.acquireLease.after',
        'source.read.after',
        'state.getMany',
        'checkpoint.commit.before',
        'checkpoint.commit.after',
        'sink.publish.mid',
        'checkpoint.markPublished.before',
      ]),
    ],
    never: [FENCING],
  },
  {
    path: 'deltas',
    deltaApply: 'transactions',
    title: `S3 delta commits applied with TransactWriteItems chunks (batch 500, ${padding()})`,
    batchSize: 500,
    steps: DELTA_STEPS,
    resharding: false,
    selection: [
      /> user-sessions > the fault-free run/,
      // A crash after the commit point or halfway through the apply: the next holder redoes the
      // delta (in chunks, partly over items already written).
      ...crash('user-sessions', ['dynamo.after-commit-point', 'dynamo.mid-apply']),
    ],
    never: [FENCING],
  },
  {
    path: 'deltas',
    title: `S3 delta and transaction commits, fencing and redo (batch 50, ${padding(true)})`,
    mixPaths: true,
    batchSize: 50,
    steps: DELTA_STEPS,
    resharding: false,
    // Crashes after the commit point: a redo of the pending delta followed by a commit on either
    // path (the hand-over).
    selection: [FENCING, ...crash('user-sessions', ['dynamo.after-commit-point'])],
    never: [/^(?!.*(> fencing: |> user-sessions > crashes at dynamo\.after-commit-point \())/],
  },
];

for (const config of CONFIGS) {
  describe(config.title, () => {
    const stats: Stats = { backends: [], fixtures: 0 };
    const metricsTest = `the commits took the ${config.path} path (DynamoBackend.metrics)`;
    beforeEach((ctx) => {
      const name = fullName(ctx.task);
      if (name.endsWith(metricsTest)) return;
      const never = config.never?.some((re) => re.test(name)) ?? false;
      const selected = FULL || config.selection.some((re) => re.test(name));
      if (never || !selected) ctx.skip();
    });

    const variant =
      config.deltaApply === undefined ? config.path : `${config.path} (${config.deltaApply} apply)`;
    describeExactlyOnce(`dynamodb+kinesis, ${variant}`, dynamoKinesisFactory(stats, config), {
      events: EVENTS,
      batchSize: config.batchSize,
      adapterFaultPoints: config.steps.map(point),
      timeoutMs: 180_000,
      resharding: config.resharding,
      ...(MAX_CACHED_KEYS === undefined ? {} : { maxCachedKeys: MAX_CACHED_KEYS }),
    });

    it(metricsTest, () => {
      const sum = totals(stats);
      console.log(`[exactly-once] ${config.title}: ${stats.fixtures} fixtures, ${JSON.stringify(sum)}`);
      if (stats.fixtures === 0) return;
      if (config.path === 'transactions') {
        expect(sum.transactions).toBeGreaterThan(0);
        expect(sum.deltaCommits).toBe(0);
      } else {
        expect(sum.deltaCommits).toBeGreaterThan(0);
        const commitTransactions = sum.transactions - sum.applyTransactions;
        if (deltaOnlyPath(config.mixPaths)) expect(commitTransactions).toBe(0);
        else expect(commitTransactions).toBeGreaterThan(0);
        if (config.deltaApply === 'transactions') expect(sum.applyTransactions).toBeGreaterThan(0);
        else expect(sum.applyTransactions).toBe(0);
      }
    });
  });
}

interface TaskLike {
  readonly name: string;
  readonly suite?: TaskLike | undefined;
}

function fullName(task: TaskLike): string {
  const parts: string[] = [];
  for (let t: TaskLike | undefined = task; t !== undefined; t = t.suite) if (t.name) parts.unshift(t.name);
  return parts.join(' > ');
}
