/**
 * The exactly-once suite: every backend + stream combination (memory; SQLite; DynamoDB+S3 and
 * Kinesis on emulators) runs it from its own test file:
 *
 *   describeExactlyOnce('sqlite', async ({ shards, faultHook }) => ({ backend, reopen, stream, close }));
 *
 * It runs the page-views and user-sessions examples with runJob over a few thousand events
 * (out of order, late, poison records) and crashes the "process" at every protocol step
 * (see faults.ts), restarting each time with a fresh runJob over a reopened backend. The
 * published outputs, deduplicated by id as an idempotent sink does, must equal a fault-free
 * run and `simulate` on the same records per shard, and no id may carry two different values.
 * It also checks fencing (a zombie's commit changes nothing) and resharding (split/merge mid-run
 * equals an un-resharded run).
 *
 * What "equal" means. Each shard's ShardTask is deterministic and independent of batch
 * boundaries, so per shard the sequence of outputs (ordered by commit number, then index, as
 * their ids say) must be identical to simulate's for the same records of that shard: same
 * sinks, same values, same order. Across shards there is no order (shards run concurrently).
 * Dead letters name the shard and the record's sequence number, which differ between a stream
 * and simulate; they are compared by shard position (the record's index in its shard). With
 * resharding the shard layout differs, so outputs are compared per key (the partition key /
 * window key), in order, across the key's lineage of shards (parents before children).
 */
import { describe, expect, it } from 'vitest';
import pageViews from '../../../examples/page-views.ts';
import userSessions from '../../../examples/user-sessions.ts';
import {
  type CheckpointStore,
  compile,
  DEAD_LETTER_SINK,
  depthOf,
  FencedError,
  hashKey,
  type Lease,
  type Output,
  type Pipeline,
  type PipelinePlan,
  type ShardCheckpoint,
  type ShardSource,
  type Sink,
  type SourceRecord,
  type StateAddress,
  type StateStore,
  seededRandom,
  shardName,
  withInlineTimers,
} from '../../core/index.ts';
import type { JobRuntime } from '../job.ts';
import { runJob } from '../local-runner.ts';
import { simulate } from '../simulate.ts';
import { WarmTasks } from '../warm-tasks.ts';
import { runShardWorker } from '../worker.ts';
import {
  BUILTIN_FAULT_POINTS,
  FAULT_POINTS,
  type FaultHit,
  type FaultHook,
  FaultInjector,
  type FaultRule,
  faultyBackend,
  faultySink,
  faultySource,
  Gate,
  isInjectedCrash,
  randomOccurrences,
  spreadOccurrences,
} from './faults.ts';
import { MemorySink } from './memory-stream.ts';

export type Backend = StateStore & CheckpointStore;

/** The stream side of a fixture: a ShardSource plus a way to write (and optionally reshard). */
export interface HarnessStream {
  readonly source: ShardSource;
  /** Appends a record to the open shard owning the partition key (MD5 hash ranges). */
  put(partitionKey: string, data: Uint8Array, arrivalTime: number): unknown;
  /** Splits an open shard in two at the middle of its hash range; returns [lower, upper]. */
  split?(shardId: string): readonly string[] | Promise<readonly string[]>;
  /** Merges two adjacent open shards; returns the child. */
  merge?(shardA: string, shardB: string): string | Promise<string>;
}

export interface ExactlyOnceFixture {
  readonly backend: Backend;
  /**
   * A fresh backend object over the same persisted data, as after a process restart. The data
   * is what the most recently reopened object (or `backend`) wrote. The previous object is
   * never used again (it may be closed here).
   */
  reopen(): Backend | Promise<Backend>;
  readonly stream: HarnessStream;
  close?(): unknown;
}

export interface FixtureOptions {
  /** Number of shards the stream starts with. */
  readonly shards: number;
  /** Adapters call it at their own fault points (see `adapterFaultPoints`). */
  readonly faultHook: FaultHook;
}

export type ExactlyOnceFactory = (options: FixtureOptions) => Promise<ExactlyOnceFixture>;

export interface ExactlyOnceOptions {
  /** Extra fault points the adapter reports through `faultHook`, e.g. 'dynamo.after-s3-delta'. */
  readonly adapterFaultPoints?: readonly string[];
  /** Events per example (at least 1000). @default 3000 */
  readonly events?: number;
  /** Records per read and batch. @default 50 */
  readonly batchSize?: number;
  /** Keys each worker caches per operator (WorkerOptions.maxCachedKeys). @default the worker's */
  readonly maxCachedKeys?: number;
  /** Per-test timeout (ms). @default 60_000 */
  readonly timeoutMs?: number;
  /** Run the resharding tests (the stream implements split and merge). @default true */
  readonly resharding?: boolean;
}

const JOB = 'eo';
const SHARDS = 4;
const KEYS = 100;
/** Event time of the first event. */
const EPOCH = Date.UTC(2026, 0, 1);
/** Processing time (arrival time of every record, and the runner's clock). */
const T0 = Date.UTC(2026, 0, 2);
/** Processing time of the final drain: every shard is idle long enough for all windows to fire. */
const T_DRAIN = T0 + 86_400_000;
/** Lease TTL of the workers; a restart moves the clock past it so the dead process's leases expire. */
const LEASE_TTL = 100;
const MAX_INCARNATIONS = 200;

// ---------------------------------------------------------------------------------------------
// Test data

interface GeneratedRecord {
  readonly partitionKey: string;
  readonly text: string;
}

interface Scenario {
  readonly name: string;
  readonly pipeline: Pipeline;
  /** The key an output belongs to (for per-key comparison across shard layouts). */
  keyOf(sink: string, value: unknown): string;
  readonly data: (mode: 'faults' | 'reshard', events: number) => GeneratedRecord[];
}

interface GenOptions {
  readonly events: number;
  readonly seed: number;
  /** Event-time span of the data. */
  readonly spanMs: number;
  /** Fraction of events moved back by up to `outOfOrderMs` (within the 5 s bound). */
  readonly outOfOrder: number;
  readonly outOfOrderMs: number;
  /** Fraction of events moved back by lateMinMs..lateMaxMs (behind the watermark). */
  readonly late: number;
  readonly lateMinMs: number;
  readonly lateMaxMs: number;
  /** Keys sleep in some 40-minute blocks (so sessions end). */
  readonly bursty: boolean;
  /** Builds the event of key `key` with a secondary attribute `other` at `ts`. */
  readonly event: (key: string, other: string, ts: number | undefined) => Record<string, unknown>;
  readonly keyName: (i: number) => string;
  readonly otherName: (i: number) => string;
}

const POISON_EVERY = 97;
const isPoison = (n: number): boolean => n % POISON_EVERY === 50;
const poisonCount = (events: number): number =>
  Array.from({ length: events }, (_, n) => n).filter(isPoison).length;

/** Deterministic events over KEYS keys, with a poison record (bad JSON / no timestamp / no key) every 97. */
function generate(o: GenOptions): GeneratedRecord[] {
  const rnd = seededRandom(o.seed);
  const out: GeneratedRecord[] = [];
  let t = EPOCH;
  const step = o.spanMs / o.events;
  for (let n = 0; n < o.events; n++) {
    t += -Math.log(1 - rnd()) * step;
    let k = Math.floor(rnd() * KEYS);
    if (o.bursty) {
      const block = Math.floor((t - EPOCH) / 2_400_000);
      for (let tries = 0; tries < 8 && (k * 7919 + block * 104_729) % 10 < 4; tries++) {
        k = Math.floor(rnd() * KEYS);
      }
    }
    const key = o.keyName(k);
    const other = o.otherName(Math.floor(rnd() * 40));
    let ts = Math.floor(t);
    const r = rnd();
    if (r < o.late) ts -= o.lateMinMs + Math.floor(rnd() * (o.lateMaxMs - o.lateMinMs));
    else if (r < o.late + o.outOfOrder) ts -= Math.floor(rnd() * o.outOfOrderMs);
    if (isPoison(n)) {
      const kind = Math.floor(n / POISON_EVERY) % 3;
      const text =
        kind === 0
          ? `{"broken": ${JSON.stringify(key)}`
          : kind === 1
            ? JSON.stringify(o.event(key, other, undefined))
            : JSON.stringify({ ...o.event(key, other, ts), page: undefined, user: undefined });
      out.push({ partitionKey: key, text });
      continue;
    }
    out.push({ partitionKey: key, text: JSON.stringify(o.event(key, other, ts)) });
  }
  return out;
}

const deadLetterKey = (value: unknown): string => String((value as { partitionKey?: string }).partitionKey);

const PAGE_VIEWS: Scenario = {
  name: 'page-views',
  pipeline: pageViews,
  keyOf: (sink, value) =>
    sink === DEAD_LETTER_SINK ? deadLetterKey(value) : String((value as { page: string }).page),
  data: (mode, events) =>
    generate({
      events,
      seed: 7,
      spanMs: 40 * 60_000,
      outOfOrder: 0.1,
      outOfOrderMs: mode === 'faults' ? 4_000 : 2_000,
      // Faults: late within and beyond the 30 s lateness. Reshard: only far behind every shard.
      late: 0.03,
      lateMinMs: mode === 'faults' ? 6_000 : 600_000,
      lateMaxMs: mode === 'faults' ? 150_000 : 1_200_000,
      bursty: false,
      keyName: (i) => `/page/${i}`,
      otherName: (i) => `user-${i}`,
      event: (page, user, ts) => ({ page, user, ts }),
    }),
};

const USER_SESSIONS: Scenario = {
  name: 'user-sessions',
  pipeline: userSessions,
  keyOf: (sink, value) =>
    sink === DEAD_LETTER_SINK ? deadLetterKey(value) : String((value as { user: string }).user),
  data: (mode, events) =>
    generate({
      events,
      seed: 11,
      spanMs: 5 * 3_600_000,
      outOfOrder: 0.1,
      outOfOrderMs: mode === 'faults' ? 4_000 : 2_000,
      late: mode === 'faults' ? 0.03 : 0,
      lateMinMs: 60_000,
      lateMaxMs: 90 * 60_000,
      bursty: true,
      keyName: (i) => `user-${i}`,
      otherName: (i) => `/page/${i}`,
      event: (user, page, ts) => ({ user, page, ts }),
    }),
};

// ---------------------------------------------------------------------------------------------
// Sinks and runs

/** An idempotent sink (MemorySink) that also records any id published with two different values. */
export class CheckingSink implements Sink {
  readonly store = new MemorySink();
  readonly conflicts: string[] = [];
  private readonly seen = new Map<string, string>();

  async publish(outputs: readonly Output[]): Promise<void> {
    for (const o of outputs) {
      const text = JSON.stringify([o.sink, o.value]);
      const previous = this.seen.get(o.id);
      if (previous === undefined) this.seen.set(o.id, text);
      else if (previous !== text) this.conflicts.push(`${o.id}: ${previous} then ${text}`);
    }
    await this.store.publish(outputs);
  }

  outputs(): Output[] {
    return [...this.store.byId].map(([id, o]) => ({ id, sink: o.sink, value: o.value }));
  }
}

interface CommitEvent {
  readonly shardId: string;
  readonly checkpoint: ShardCheckpoint;
  readonly outputs: number;
}

/** The worker options a suite varies. */
interface WorkerSettings {
  readonly batchSize: number;
  readonly maxCachedKeys?: number;
}

interface RunContext {
  readonly scenario: Scenario;
  readonly fixture: ExactlyOnceFixture;
  readonly injector: FaultInjector;
  readonly sink: CheckingSink;
  readonly worker: WorkerSettings;
  /** Compiled once, so a kept task is reused (WarmTasks reuses a task only for its own plan). */
  readonly plan: PipelinePlan;
  /**
   * The tasks kept across runs and incarnations: shards whose worker ended cleanly go on warm,
   * as in a Lambda container that lived on; a crashed worker's shard restarts cold.
   */
  readonly warmTasks: WarmTasks;
  backend: Backend;
  clock: number;
  incarnations: number;
  /** Every successful commit, in order. */
  readonly commits: CommitEvent[];
  snapshot?: { outputs: Output[]; checkpoints: ShardCheckpoint[] };
}

type Step = (ctx: RunContext) => Promise<void>;

async function putRecords(stream: HarnessStream, records: readonly GeneratedRecord[]): Promise<void> {
  const encoder = new TextEncoder();
  for (const r of records) await stream.put(r.partitionKey, encoder.encode(r.text), T0);
}

const put =
  (records: readonly GeneratedRecord[]): Step =>
  (ctx) =>
    putRecords(ctx.fixture.stream, records);

/** runJob until every shard is caught up, restarting (reopened backend, fresh workers) after each crash. */
const run: Step = async (ctx) => {
  const injector = ctx.injector;
  for (;;) {
    if (ctx.incarnations >= MAX_INCARNATIONS) {
      throw new Error(
        `no progress after ${MAX_INCARNATIONS} incarnations (${injector.crashes.length} crashes)`,
      );
    }
    ctx.incarnations++;
    injector.revive();
    const now = ctx.clock;
    const job: JobRuntime = {
      job: JOB,
      plan: ctx.plan,
      source: faultySource(ctx.fixture.stream.source, injector),
      backend: faultyBackend(ctx.backend, injector),
      sink: faultySink(ctx.sink, injector),
      clock: () => now,
    };
    try {
      await runJob(job, {
        owner: `incarnation-${ctx.incarnations}`,
        untilIdle: true,
        ...ctx.worker,
        leaseTtlMs: LEASE_TTL,
        idlePollMs: 1,
        roundPauseMs: 1,
        warmTasks: ctx.warmTasks,
      });
      if (!injector.dead) return;
    } catch (error) {
      if (!isInjectedCrash(error)) throw error;
    }
    // The process is dead: wait for its stragglers, restart over the persisted data. Its
    // leases are not released; the clock moves past their expiry.
    await injector.quiesce();
    ctx.backend = await ctx.fixture.reopen();
    ctx.clock += LEASE_TTL + 1;
  }
};

/** Processing time jumps a day: every shard goes idle, every window fires. */
const drain: Step = async (ctx) => {
  ctx.clock = Math.max(ctx.clock, T_DRAIN);
  await run(ctx);
};

const snapshot: Step = async (ctx) => {
  ctx.snapshot = { outputs: ctx.sink.outputs(), checkpoints: await inlineCheckpoints(ctx.backend) };
};

interface RunResult {
  readonly outputs: Output[];
  readonly conflicts: readonly string[];
  readonly crashes: readonly FaultHit[];
  readonly checkpoints: ShardCheckpoint[];
  readonly snapshot: { outputs: Output[]; checkpoints: ShardCheckpoint[] } | undefined;
  readonly commits: readonly CommitEvent[];
  readonly shards: ShardLayout;
  readonly incarnations: number;
  /** Worker invocations that went on with a kept task. */
  readonly warmHits: number;
}

interface ShardLayout {
  /** Shard ids in creation order (parents before children). */
  readonly order: string[];
  readonly parents: Map<string, readonly string[]>;
  /** Per shard: sequence number -> index of the record in its shard. */
  readonly positions: Map<string, Map<string, number>>;
  readonly records: Map<string, SourceRecord[]>;
}

async function readAll(source: ShardSource, shardId: string): Promise<SourceRecord[]> {
  const reader = await source.openReader(shardId, { type: 'TRIM_HORIZON' });
  const out: SourceRecord[] = [];
  try {
    for (let i = 0; i < 100_000; i++) {
      const r = await reader.read(10_000);
      out.push(...r.records);
      if (r.shardEnded || (r.records.length === 0 && r.millisBehindLatest === 0)) break;
    }
  } finally {
    await reader.close?.();
  }
  return out;
}

async function layoutOf(source: ShardSource): Promise<ShardLayout> {
  const shards = await source.listShards();
  const order = shards.map((s) => s.shardId);
  const parents = new Map(shards.map((s) => [s.shardId, s.parentShardIds]));
  const positions = new Map<string, Map<string, number>>();
  const records = new Map<string, SourceRecord[]>();
  for (const id of order) {
    const list = await readAll(source, id);
    records.set(id, list);
    positions.set(id, new Map(list.map((r, i) => [r.sequenceNumber, i])));
  }
  return { order, parents, positions, records };
}

async function runScenario(
  scenario: Scenario,
  factory: ExactlyOnceFactory,
  steps: readonly Step[],
  rules: readonly FaultRule[],
  worker: WorkerSettings,
): Promise<RunResult> {
  const injector = new FaultInjector(rules);
  const fixture = await factory({ shards: SHARDS, faultHook: injector.hook });
  try {
    const ctx: RunContext = {
      scenario,
      fixture,
      injector,
      sink: new CheckingSink(),
      worker,
      plan: compile(scenario.pipeline),
      warmTasks: new WarmTasks(),
      backend: fixture.backend,
      clock: T0,
      incarnations: 0,
      commits: [],
    };
    injector.add({
      point: FAULT_POINTS.commitAfter,
      at: () => false,
      match: (detail) => {
        const { shardId, commit } = detail as {
          shardId: string;
          commit: { checkpoint: ShardCheckpoint; outputs: unknown[] };
        };
        ctx.commits.push({ shardId, checkpoint: commit.checkpoint, outputs: commit.outputs.length });
        return false;
      },
    });
    for (const step of steps) await step(ctx);
    const shards = await layoutOf(fixture.stream.source);
    // Every committed output was published (and marked): nothing is left in any outbox.
    for (const id of shards.order) {
      const pending = await ctx.backend.unpublishedOutputs(id);
      expect(
        pending.map((o) => o.id),
        `unpublished outputs of ${id}`,
      ).toEqual([]);
    }
    return {
      outputs: ctx.sink.outputs(),
      conflicts: ctx.sink.conflicts,
      crashes: injector.crashes,
      checkpoints: await inlineCheckpoints(ctx.backend),
      snapshot: ctx.snapshot,
      commits: ctx.commits,
      shards,
      incarnations: ctx.incarnations,
      warmHits: ctx.warmTasks.stats.hits,
    };
  } finally {
    await fixture.close?.();
  }
}

/** Chunks of the data, each put and then run to idle, then a drain (all windows fire). */
function plainSteps(data: readonly GeneratedRecord[]): Step[] {
  const third = Math.ceil(data.length / 3);
  return [
    put(data.slice(0, third)),
    run,
    put(data.slice(third, 2 * third)),
    run,
    put(data.slice(2 * third)),
    run,
    snapshot,
    drain,
  ];
}

// ---------------------------------------------------------------------------------------------
// Expected results: simulate on the same records, per shard

async function simulateShards(
  pipeline: Pipeline,
  shards: readonly SourceRecord[][],
  withDrain: boolean,
): Promise<Output[]> {
  const decoder = new TextDecoder();
  const lines: string[] = [];
  shards.forEach((records, shard) => {
    for (const r of records) {
      const raw = typeof r.data === 'string' ? r.data : decoder.decode(r.data as Uint8Array);
      lines.push(JSON.stringify({ partitionKey: r.partitionKey, raw, shard, arrival: r.arrivalTime }));
    }
  });
  if (withDrain) lines.push(JSON.stringify({ processingTime: T_DRAIN }));
  const outputs: Output[] = [];
  await simulate(pipeline, lines, { shards: shards.length, onOutput: (o) => outputs.push(o) });
  return outputs;
}

interface ParsedId {
  readonly shardId: string;
  readonly commit: number;
  readonly index: number;
}

function parseId(id: string): ParsedId {
  const parts = id.split('/');
  return {
    shardId: parts.at(-3) ?? '',
    commit: Number(parts.at(-2)),
    index: Number(parts.at(-1)),
  };
}

type Emission = readonly [sink: string, value: unknown];

/**
 * Per shard (by label), the emissions in commit/index order. Dead letters get their shard label
 * and their record's index in the shard instead of the shard id and sequence number.
 */
function perShard(
  outputs: readonly Output[],
  label: (shardId: string) => string,
  position: (shardId: string, sequenceNumber: string) => number | string,
): Map<string, Emission[]> {
  const rows = outputs.map((o) => ({ o, id: parseId(o.id) }));
  rows.sort((a, b) =>
    a.id.shardId !== b.id.shardId
      ? a.id.shardId < b.id.shardId
        ? -1
        : 1
      : a.id.commit - b.id.commit || a.id.index - b.id.index,
  );
  const out = new Map<string, Emission[]>();
  for (const { o, id } of rows) {
    const shard = label(id.shardId);
    let value = o.value;
    if (o.sink === DEAD_LETTER_SINK) {
      const letter = value as { shardId: string; sequenceNumber?: string };
      value = {
        ...letter,
        shardId: shard,
        sequenceNumber:
          letter.sequenceNumber === undefined ? undefined : position(letter.shardId, letter.sequenceNumber),
      };
    }
    const list = out.get(shard) ?? [];
    list.push([o.sink, value]);
    out.set(shard, list);
  }
  return out;
}

/** A concise description of the first difference between two per-shard (or per-key) maps. */
function firstDifference(
  actual: ReadonlyMap<string, readonly unknown[]>,
  expected: ReadonlyMap<string, readonly unknown[]>,
): string | undefined {
  const groups = [...new Set([...actual.keys(), ...expected.keys()])].sort();
  for (const g of groups) {
    const a = actual.get(g) ?? [];
    const e = expected.get(g) ?? [];
    const n = Math.max(a.length, e.length);
    for (let i = 0; i < n; i++) {
      const x = JSON.stringify(a[i]);
      const y = JSON.stringify(e[i]);
      if (x !== y) {
        return `${g}: ${a.length} vs ${e.length} expected; first difference at #${i}: got ${x ?? 'nothing'}, expected ${y ?? 'nothing'}`;
      }
    }
  }
  return undefined;
}

function countBySink(outputs: readonly Output[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const o of outputs) counts[o.sink] = (counts[o.sink] ?? 0) + 1;
  return counts;
}

/** Per-shard emissions of a run over the initial shards (labels "0".."3" in shard id order). */
function runPerShard(outputs: readonly Output[], layout: ShardLayout): Map<string, Emission[]> {
  const sorted = [...layout.order].sort();
  return perShard(
    outputs,
    (id) => String(sorted.indexOf(id)),
    (id, seq) => layout.positions.get(id)?.get(seq) ?? `unknown ${seq}`,
  );
}

/** Per-shard emissions of simulate (shards shardName(i), sequence numbers 1, 2, ...). */
function simulatedPerShard(outputs: readonly Output[], shards: number): Map<string, Emission[]> {
  const names = Array.from({ length: shards }, (_, i) => shardName(i));
  return perShard(
    outputs,
    (id) => String(names.indexOf(id)),
    (_id, seq) => Number(seq) - 1,
  );
}

/**
 * Per sink and key, the values in emission order along the key's shard lineage. Dead letters
 * lose their shard id and sequence number (they depend on the layout).
 */
function perKey(outputs: readonly Output[], scenario: Scenario, layout: ShardLayout): Map<string, unknown[]> {
  const rank = new Map(layout.order.map((id, i) => [id, i]));
  const rows = outputs.map((o) => ({ o, id: parseId(o.id) }));
  rows.sort(
    (a, b) =>
      (rank.get(a.id.shardId) ?? 0) - (rank.get(b.id.shardId) ?? 0) ||
      a.id.commit - b.id.commit ||
      a.id.index - b.id.index,
  );
  const out = new Map<string, unknown[]>();
  for (const { o } of rows) {
    let value = o.value;
    if (o.sink === DEAD_LETTER_SINK) {
      const { shardId: _s, sequenceNumber: _q, ...rest } = value as Record<string, unknown>;
      value = rest;
    }
    const group = `${o.sink} ${scenario.keyOf(o.sink, o.value)}`;
    const list = out.get(group) ?? [];
    list.push(value);
    out.set(group, list);
  }
  return out;
}

function comparableCheckpoint(c: ShardCheckpoint, withTime: boolean): unknown {
  return {
    shardId: c.shardId,
    position: c.position,
    finished: c.finished,
    timers: c.timers,
    ...(withTime ? { watermark: c.watermark, maxTimestamp: c.maxTimestamp } : {}),
  };
}

/** Every checkpoint with its pending timers inline (runs commit at different points, so their timer logs differ). */
async function inlineCheckpoints(backend: Backend): Promise<ShardCheckpoint[]> {
  return Promise.all((await backend.listCheckpoints()).map((c) => withInlineTimers(c, backend)));
}

function byShard(list: readonly ShardCheckpoint[], withTime: boolean): unknown[] {
  return [...list]
    .sort((a, b) => (a.shardId < b.shardId ? -1 : 1))
    .map((c) => comparableCheckpoint(c, withTime));
}

// ---------------------------------------------------------------------------------------------
// The suite

export function describeExactlyOnce(
  name: string,
  factory: ExactlyOnceFactory,
  options: ExactlyOnceOptions = {},
): void {
  const events = options.events ?? 3000;
  const worker: WorkerSettings = {
    batchSize: options.batchSize ?? 50,
    ...(options.maxCachedKeys === undefined ? {} : { maxCachedKeys: options.maxCachedKeys }),
  };
  const timeout = options.timeoutMs ?? 60_000;
  const points = [...BUILTIN_FAULT_POINTS, ...(options.adapterFaultPoints ?? [])];

  describe(`exactly-once: ${name}`, () => {
    for (const scenario of [PAGE_VIEWS, USER_SESSIONS]) {
      describe(scenario.name, () => {
        const data = scenario.data('faults', events);
        const steps = plainSteps(data);

        interface Reference {
          readonly run: RunResult;
          readonly simulated: Map<string, Emission[]>;
          readonly simulatedBeforeDrain: Map<string, Emission[]>;
        }
        let reference: Promise<Reference> | undefined;
        const getReference = (): Promise<Reference> => {
          reference ??= (async () => {
            const result = await runScenario(scenario, factory, steps, [], worker);
            const sorted = [...result.shards.order].sort();
            const records = sorted.map((id) => result.shards.records.get(id) ?? []);
            const simulated = await simulateShards(scenario.pipeline, records, true);
            const before = await simulateShards(scenario.pipeline, records, false);
            return {
              run: result,
              simulated: simulatedPerShard(simulated, records.length),
              simulatedBeforeDrain: simulatedPerShard(before, records.length),
            };
          })();
          return reference;
        };

        const expectExact = (result: RunResult, ref: Reference): void => {
          expect(result.conflicts, 'output ids published with two different values').toEqual([]);
          const ids = result.outputs.map((o) => o.id);
          expect(new Set(ids).size).toBe(ids.length);
          const actual = runPerShard(result.outputs, result.shards);
          expect(firstDifference(actual, ref.simulated), 'vs simulate').toBeUndefined();
          expect(firstDifference(actual, runPerShard(ref.run.outputs, ref.run.shards)), 'vs fault-free').toBe(
            undefined,
          );
          const before = runPerShard(result.snapshot?.outputs ?? [], result.shards);
          expect(firstDifference(before, ref.simulatedBeforeDrain), 'before the drain, vs simulate').toBe(
            undefined,
          );
          expect(byShard(result.snapshot?.checkpoints ?? [], true), 'checkpoints before the drain').toEqual(
            byShard(ref.run.snapshot?.checkpoints ?? [], true),
          );
          expect(byShard(result.checkpoints, false), 'final checkpoints').toEqual(
            byShard(ref.run.checkpoints, false),
          );
        };

        it(
          'the fault-free run equals simulate on the same records per shard',
          async () => {
            const ref = await getReference();
            const counts = countBySink(ref.run.outputs);
            // The data exercises what it should: windows, late data, every poison record dead-lettered.
            expect(counts[DEAD_LETTER_SINK] ?? 0).toBe(poisonCount(events));
            expect(Object.keys(counts).length).toBeGreaterThanOrEqual(3);
            if (scenario === PAGE_VIEWS)
              expect(counts['late-page-views'] ?? 0).toBeGreaterThan(events / 1000);
            // Later runs of a shard go on with the task its previous run kept.
            expect(ref.run.warmHits).toBeGreaterThan(0);
            const perShardRecords = [...ref.run.shards.records.values()].map((r) => r.length);
            expect(Math.min(...perShardRecords)).toBeGreaterThan(events / 10);
            expectExact(ref.run, ref);
          },
          timeout,
        );

        for (const point of points) {
          it(
            `crashes at ${point} (1st, 2nd, 4th, 7th, ... occurrence), restarts: exact`,
            async () => {
              const ref = await getReference();
              const result = await runScenario(
                scenario,
                factory,
                steps,
                [{ point, at: spreadOccurrences(14) }],
                worker,
              );
              expect(result.crashes.length, `crashes injected at ${point}`).toBeGreaterThanOrEqual(4);
              expectExact(result, ref);
            },
            timeout,
          );
        }

        it(
          'random crashes at every fault point (seeded): exact',
          async () => {
            const ref = await getReference();
            const result = await runScenario(
              scenario,
              factory,
              steps,
              // 5 % of every fault point's occurrences: warm tasks make fewer calls (no state re-reads), and
              // at 3 % the transaction path's run crashed at only 2-3 distinct points.
              [{ point: '*', at: randomOccurrences(scenario.name.length, 0.05), limit: 40 }],
              worker,
            );
            const where = new Set(result.crashes.map((c) => c.point));
            expect(where.size, `crash points: ${[...where].join(', ')}`).toBeGreaterThanOrEqual(4);
            expectExact(result, ref);
          },
          timeout,
        );
      });
    }

    it(
      'fencing: a stalled worker whose lease was taken over cannot commit, and changes nothing',
      async () => {
        const scenario = PAGE_VIEWS;
        const data = scenario.data('faults', events);
        const noFaults = new FaultInjector();
        const fixture = await factory({ shards: SHARDS, faultHook: noFaults.hook });
        try {
          await putRecords(fixture.stream, data);
          const backend = fixture.backend;
          const shardId = (await fixture.stream.source.listShards()).map((s) => s.shardId).sort()[0]!;
          const sink = new CheckingSink();
          const options = { ...worker, leaseTtlMs: 1000, untilIdle: true, idlePollMs: 1 };

          // Worker A commits twice, then stalls after processing its third batch.
          const gateA = new Gate();
          const leases: Lease[] = [];
          const recordLease: FaultRule = {
            point: FAULT_POINTS.acquireLeaseAfter,
            at: () => false,
            match: (d) => {
              leases.push((d as { lease: Lease }).lease);
              return false;
            },
          };
          const injA = new FaultInjector([
            recordLease,
            { point: FAULT_POINTS.commitBefore, at: 3, action: gateA.pause },
          ]);
          const jobA: JobRuntime = {
            job: JOB,
            plan: compile(scenario.pipeline),
            source: fixture.stream.source,
            backend: faultyBackend(backend, injA),
            sink,
            clock: () => T0,
          };
          const workerA = runShardWorker(jobA, shardId, { ...options, owner: 'worker-A' });
          workerA.catch(() => {});
          const stalled = await gateA.reached;
          const zombieCommit = (stalled.detail as { commit: { mutations: { address: StateAddress }[] } })
            .commit;

          // A's lease expires; worker B takes over, commits once and pauses before its second commit.
          const gateB = new Gate();
          const bCommits: { mutations: { address: StateAddress }[]; checkpoint: ShardCheckpoint }[] = [];
          const injB = new FaultInjector([
            recordLease,
            {
              point: FAULT_POINTS.commitAfter,
              at: () => false,
              match: (d) => {
                bCommits.push((d as { commit: (typeof bCommits)[number] }).commit);
                return false;
              },
            },
            { point: FAULT_POINTS.commitBefore, at: 2, action: gateB.pause },
          ]);
          const jobB: JobRuntime = {
            ...jobA,
            plan: compile(scenario.pipeline),
            backend: faultyBackend(backend, injB),
            clock: () => T0 + 5_000,
          };
          const workerB = runShardWorker(jobB, shardId, { ...options, owner: 'worker-B' });
          await gateB.reached;
          expect(leases.map((l) => l.owner)).toEqual(['worker-A', 'worker-B']);
          expect(leases[1]!.fence).toBeGreaterThan(leases[0]!.fence);
          expect(bCommits[0]?.checkpoint.commitNumber, 'B resumes after A’s two commits').toBe(3);

          const addresses = [
            ...new Set(
              [...zombieCommit.mutations, ...bCommits.flatMap((c) => c.mutations)].map((m) => m.address),
            ),
          ];
          const observe = async (): Promise<unknown> => ({
            checkpoints: byShard(await backend.listCheckpoints(), true),
            checkpoint: await backend.readCheckpoint(shardId),
            outbox: await backend.unpublishedOutputs(shardId),
            state: [...(await backend.getMany(addresses))].sort(),
          });
          const before = await observe();

          // The zombie wakes up: its commit is fenced off and changes nothing.
          gateA.open();
          await expect(workerA).rejects.toBeInstanceOf(FencedError);
          expect(await observe()).toEqual(before);
          await expect(backend.renewLease(leases[0]!, T0 + 5_000, 1000)).rejects.toBeInstanceOf(FencedError);

          gateB.open();
          const resultB = await workerB;
          expect(resultB.caughtUp).toBe(true);

          // B's results are exact: the shard's outputs equal simulate on its records.
          expect(sink.conflicts).toEqual([]);
          const records = await readAll(fixture.stream.source, shardId);
          const simulated = await simulateShards(scenario.pipeline, [records], false);
          const positions = new Map(records.map((r, i) => [r.sequenceNumber, i]));
          const actual = perShard(
            sink.outputs(),
            () => '0',
            (_id, seq) => positions.get(seq) ?? -1,
          );
          const expected = simulatedPerShard(simulated, 1);
          expect(firstDifference(actual, expected)).toBeUndefined();
          expect(actual.get('0')?.length ?? 0).toBeGreaterThan(10);
        } finally {
          await fixture.close?.();
        }
      },
      timeout,
    );

    describe.skipIf(options.resharding === false)('resharding', () => {
      /** Split shard 0 and merge shards 2+3 before any of their records were read, then merge the upper child of 0 with 1. */
      const reshardSteps = (data: readonly GeneratedRecord[]): Step[] => {
        const n = data.length;
        const at = (f: number): number => Math.floor(n * f);
        const initial = async (ctx: RunContext): Promise<string[]> =>
          (await ctx.fixture.stream.source.listShards())
            .filter((s) => s.parentShardIds.length === 0)
            .map((s) => s.shardId)
            .sort();
        let upperChild = '';
        return [
          put(data.slice(0, at(0.3))),
          run,
          put(data.slice(at(0.3), at(0.45))),
          async (ctx) => {
            const [s0] = await initial(ctx);
            const children = await ctx.fixture.stream.split!(s0!);
            upperChild = children[1]!;
          },
          put(data.slice(at(0.45), at(0.55))),
          async (ctx) => {
            const [, , s2, s3] = await initial(ctx);
            await ctx.fixture.stream.merge!(s2!, s3!);
          },
          put(data.slice(at(0.55), at(0.65))),
          run,
          put(data.slice(at(0.65), at(0.75))),
          async (ctx) => {
            const [, s1] = await initial(ctx);
            await ctx.fixture.stream.merge!(upperChild, s1!);
          },
          put(data.slice(at(0.75))),
          run,
          snapshot,
          drain,
        ];
      };

      const expectLineage = (result: RunResult): void => {
        // Children start only after all their parents committed their end.
        const last = new Map<string, number>();
        const first = new Map<string, number>();
        result.commits.forEach((c, i) => {
          last.set(c.shardId, i);
          if (!first.has(c.shardId)) first.set(c.shardId, i);
        });
        const children = [...result.shards.parents].filter(([, parents]) => parents.length > 0);
        expect(children.length).toBe(4);
        // Every commit carries its shard's lineage depth: one deeper than its deepest parent.
        const depth = (shardId: string): number =>
          Math.max(-1, ...(result.shards.parents.get(shardId) ?? []).map(depth)) + 1;
        for (const c of result.commits) {
          expect(depthOf(c.checkpoint), `depth of ${c.shardId}`).toBe(depth(c.shardId));
        }
        expect(Math.max(...result.commits.map((c) => depthOf(c.checkpoint)))).toBe(2);
        for (const [child, parents] of children) {
          expect(result.shards.records.get(child)?.length ?? 0, `records of ${child}`).toBeGreaterThan(
            events / 60,
          );
          for (const parent of parents) {
            const lastOfParent = result.commits[last.get(parent) ?? -1];
            expect(lastOfParent?.checkpoint.finished, `${parent} finished`).toBe(true);
            expect(first.get(child) ?? -1, `${child} starts after ${parent} ends`).toBeGreaterThan(
              last.get(parent) ?? Number.POSITIVE_INFINITY,
            );
          }
        }
      };

      for (const scenario of [PAGE_VIEWS, USER_SESSIONS]) {
        const data = scenario.data('reshard', events);
        let plain: Promise<RunResult> | undefined;
        const getPlain = (): Promise<RunResult> => {
          plain ??= runScenario(scenario, factory, plainSteps(data), [], worker);
          return plain;
        };
        const compare = async (result: RunResult): Promise<void> => {
          const reference = await getPlain();
          expect(result.conflicts).toEqual([]);
          expect(
            firstDifference(
              perKey(result.outputs, scenario, result.shards),
              perKey(reference.outputs, scenario, reference.shards),
            ),
          ).toBeUndefined();
          expect(countBySink(result.outputs)).toEqual(countBySink(reference.outputs));
        };

        it(
          `${scenario.name}: split and merge mid-run equal an un-resharded run, per key`,
          async () => {
            const result = await runScenario(scenario, factory, reshardSteps(data), [], worker);
            expectLineage(result);
            await compare(result);
          },
          timeout,
        );

        it(
          `${scenario.name}: split and merge with crashes equal an un-resharded run`,
          async () => {
            const result = await runScenario(
              scenario,
              factory,
              reshardSteps(data),
              [
                {
                  point: [
                    FAULT_POINTS.acquireLeaseAfter,
                    FAULT_POINTS.readAfter,
                    FAULT_POINTS.getMany,
                    FAULT_POINTS.commitBefore,
                    FAULT_POINTS.markPublishedBefore,
                  ],
                  at: randomOccurrences(3, 0.04),
                  limit: 30,
                },
              ],
              worker,
            );
            expect(result.crashes.length).toBeGreaterThanOrEqual(5);
            await compare(result);
          },
          timeout,
        );
      }

      // A finished shard is never run again, so the outbox of a crash between the commit that
      // finishes a closed shard and the publish of its outputs must be published by someone
      // else (lib/runtime/local-runner.ts, coordinator.ts), or those outputs are lost.
      it(
        'a crash after the final commit of a closed parent, before its publish, loses nothing',
        async () => {
          const scenario = PAGE_VIEWS;
          const data = scenario.data('reshard', events);
          const result = await runScenario(
            scenario,
            factory,
            reshardSteps(data),
            [
              {
                point: FAULT_POINTS.commitAfter,
                match: (d) => {
                  const { commit } = d as { commit: { checkpoint: ShardCheckpoint; outputs: unknown[] } };
                  return commit.checkpoint.finished && commit.outputs.length > 0;
                },
                at: () => true,
              },
            ],
            worker,
          );
          expect(result.crashes.length).toBeGreaterThanOrEqual(1);
          const reference = await runScenario(scenario, factory, plainSteps(data), [], worker);
          expect(
            firstDifference(
              perKey(result.outputs, scenario, result.shards),
              perKey(reference.outputs, scenario, reference.shards),
            ),
          ).toBeUndefined();
        },
        timeout,
      );

      // A child that receives no records goes idle only if it inherits its parent's last record
      // time (lib/runtime/coordinator.ts childCheckpoint); else the windows it inherited never fire.
      it(
        'a split child that receives no records still fires its inherited windows at idleness',
        async () => {
          const scenario = PAGE_VIEWS;
          const data = scenario.data('reshard', events);
          const result = await runScenario(
            scenario,
            factory,
            [
              put(data),
              run,
              async (ctx) => {
                const shards = await ctx.fixture.stream.source.listShards();
                await ctx.fixture.stream.split!(shards.map((s) => s.shardId).sort()[0]!);
              },
              run,
              drain,
            ],
            [],
            worker,
          );
          const reference = await runScenario(scenario, factory, [put(data), run, drain], [], worker);
          expect(
            firstDifference(
              perKey(result.outputs, scenario, result.shards),
              perKey(reference.outputs, scenario, reference.shards),
            ),
          ).toBeUndefined();
        },
        timeout,
      );

      // Merging a shard that never had a record: the child's event time must come from the
      // parent that had records (lib/runtime/coordinator.ts childCheckpoint); the minimum over
      // both, -Infinity, would keep it from going idle, and the inherited windows would never fire.
      it(
        'merging a shard that never had a record: the inherited windows still fire at idleness',
        async () => {
          const scenario = PAGE_VIEWS;
          const all = scenario.data('reshard', events);
          const lastTwo = async (ctx: RunContext): Promise<string[]> =>
            (await ctx.fixture.stream.source.listShards())
              .map((s) => s.shardId)
              .sort()
              .slice(-2);
          // Only keys outside the last shard's hash range: it stays empty.
          const keepOut: Step = async (ctx) => {
            const [, last] = await lastTwo(ctx);
            const range = (await ctx.fixture.stream.source.listShards()).find(
              (s) => s.shardId === last,
            )!.hashKeyRange;
            const data = all.filter((r) => {
              const h = hashKey(r.partitionKey);
              return h < BigInt(range.start) || h > BigInt(range.end);
            });
            await putRecords(ctx.fixture.stream, data);
          };
          const result = await runScenario(
            scenario,
            factory,
            [
              keepOut,
              run,
              async (ctx) => {
                const [a, b] = await lastTwo(ctx);
                await ctx.fixture.stream.merge!(a!, b!);
              },
              run,
              drain,
            ],
            [],
            worker,
          );
          const reference = await runScenario(scenario, factory, [keepOut, run, drain], [], worker);
          expect(
            firstDifference(
              perKey(result.outputs, scenario, result.shards),
              perKey(reference.outputs, scenario, reference.shards),
            ),
          ).toBeUndefined();
        },
        timeout,
      );
    });
  });
}
