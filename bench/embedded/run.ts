/**
 * Embedded backend benchmark: examples/page-views.ts on the same generated clicks, through
 *
 * - the in-memory engine: per shard, ShardTask batches over the records (JSON bytes, so
 *   deserialization is included) with a MemoryBackend, committing every batch under a lease
 *   and marking its outputs published, as a worker does, with no I/O; and
 * - the embedded backend: the SQLite local log, SqliteBackend and SqliteTableSink through
 *   runJob (untilIdle), as `floe run` does — reads, commits, outbox and published outputs in
 *   one SQLite file,
 *
 * measured in the same run, with the ratio, commits and state writes per 1,000 events. The
 * bench fails unless both produce the same final window counts, late events and dead letters.
 * (runJob commits once more per shard than the in-memory loop: its second round finds every
 * shard caught up and commits the idle watermark, which has moved on with the clock.)
 *
 *   npx tsx bench/embedded/run.ts
 *
 * Environment: BENCH_EVENTS (default 200,000), BENCH_SHARDS (default 4), BENCH_BATCH (records
 * per read and commit, default 1,000 as `floe run`), BENCH_RUNS (timed runs per backend, the
 * median is reported, default 3), BENCH_WARMUP (untimed runs first, default 1), BENCH_DIR (the
 * data directory, default a fresh temporary one, removed at the end).
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import pageViews, { type PageViewCount } from '../../examples/page-views.ts';
import { clickRecords } from '../../lib/cli/produce.ts';
import {
  type Commit,
  compile,
  DEAD_LETTER_SINK,
  type Lease,
  MemoryBackend,
  ShardTask,
  type SourceRecord,
} from '../../lib/core/index.ts';
import { databasePath, openEmbeddedJob } from '../../lib/embedded/job.ts';
import { formatSequenceNumber, LocalLog } from '../../lib/embedded/local-log.ts';
import { outputTableName } from '../../lib/embedded/sinks.ts';
import { SqliteBackend } from '../../lib/embedded/sqlite-backend.ts';
import { runJob } from '../../lib/runtime/local-runner.ts';

const EVENTS = envInt('BENCH_EVENTS', 200_000);
const SHARDS = envInt('BENCH_SHARDS', 4);
const BATCH = envInt('BENCH_BATCH', 1_000);
const RUNS = envInt('BENCH_RUNS', 3);
const WARMUP = envInt('BENCH_WARMUP', 1, 0);
const POISON = Math.max(1, Math.round(EVENTS / 10_000));
const STREAM = 'page-views';
const COUNTS = 'page-view-counts';
const LATE = 'late-page-views';

function envInt(name: string, fallback: number, min = 1): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw.replaceAll('_', ''));
  if (!Number.isInteger(n) || n < min) {
    console.error(`${name} must be an integer >= ${min}; got ${raw}`);
    process.exit(2);
  }
  return n;
}

class BenchFailure extends Error {}

/** Stops the bench: printed as BENCH FAILED, exit code 1 (after removing the temporary data). */
function fail(message: string): never {
  throw new BenchFailure(message);
}

/** What a run measured and produced. */
interface RunResult {
  readonly seconds: number;
  readonly commits: number;
  readonly stateWrites: number;
  /** Final result per (page, window start): the last one emitted (re-fires supersede). */
  readonly finals: Map<string, number>;
  readonly results: number;
  readonly late: number;
  readonly deadLetters: number;
}

class Results {
  readonly finals = new Map<string, number>();
  results = 0;
  late = 0;
  deadLetters = 0;

  /** Outputs of one shard, in emission order. */
  add(outputs: Iterable<{ sink: string; value: unknown }>): void {
    for (const o of outputs) {
      if (o.sink === COUNTS) {
        const c = o.value as PageViewCount;
        this.finals.set(`${c.page}@${c.windowStart}`, c.views);
        this.results++;
      } else if (o.sink === LATE) this.late++;
      else if (o.sink === DEAD_LETTER_SINK) this.deadLetters++;
      else fail(`unexpected output to sink "${o.sink}": ${JSON.stringify(o.value)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// In-memory engine: what a worker does per shard, without the log, SQLite or a sink.

async function runMemory(shards: ReadonlyMap<string, SourceRecord[]>): Promise<RunResult> {
  const plan = compile(pageViews);
  const backend = new MemoryBackend();
  const results = new Results();
  let commits = 0;
  let stateWrites = 0;
  const commit = async (lease: Lease, result: Commit & { changed: boolean }): Promise<void> => {
    if (!result.changed) return;
    await backend.commit(lease, result);
    commits++;
    stateWrites += result.mutations.length;
    if (result.outputs.length > 0) {
      await backend.markPublished(
        lease.shardId,
        result.outputs.map((o) => o.id),
      );
    }
    results.add(result.outputs);
  };
  const started = performance.now();
  for (const [shardId, records] of shards) {
    const lease = await backend.acquireLease(shardId, 'bench', Date.now(), 2 ** 40);
    const task = new ShardTask(plan, shardId, { job: 'bench-memory' });
    for (let i = 0; i < records.length; i += BATCH) {
      await commit(lease, await task.processBatch(records.slice(i, i + BATCH), backend, Date.now()));
    }
    // Caught up: an empty batch, where idleness fires every remaining window (as in the worker).
    await commit(lease, await task.processBatch([], backend, Date.now()));
  }
  const seconds = (performance.now() - started) / 1000;
  return {
    seconds,
    commits,
    stateWrites,
    finals: results.finals,
    results: results.results,
    late: results.late,
    deadLetters: results.deadLetters,
  };
}

// ---------------------------------------------------------------------------------------------
// Embedded backend: runJob over the SQLite log, state store and table sink (as `floe run`).

/** Counts commits and state writes (puts and deletes) on the way to SQLite. */
class CountingSqliteBackend extends SqliteBackend {
  commits = 0;
  stateWrites = 0;

  override async commit(lease: Lease, commit: Commit): Promise<void> {
    await super.commit(lease, commit);
    this.commits++;
    this.stateWrites += commit.mutations.length;
  }
}

async function runEmbedded(dataDir: string, job: string): Promise<RunResult> {
  const embedded = await openEmbeddedJob({ dataDir, stream: STREAM, job, plan: compile(pageViews) });
  try {
    const backend = new CountingSqliteBackend(embedded.db, { job });
    const started = performance.now();
    const summary = await runJob(
      { ...embedded.runtime, backend },
      { untilIdle: true, batchSize: BATCH, leaseTtlMs: 60_000, idlePollMs: 200 },
    );
    const seconds = (performance.now() - started) / 1000;
    if (summary.records !== totalRecords) {
      fail(`the embedded run processed ${summary.records} records of ${totalRecords}`);
    }
    if (summary.commits !== backend.commits) {
      fail(`runJob reported ${summary.commits} commits, the backend saw ${backend.commits}`);
    }
    // Published outputs, per shard in emission order (ids: job/shard/commit/index).
    const rows = embedded.db
      .prepare<[], { id: string; sink: string; value: string }>(
        `SELECT id, sink, value FROM "${outputTableName(job)}"`,
      )
      .all()
      .map((r) => {
        const [, shard, commit, index] = r.id.split('/');
        return { shard: shard!, commit: Number(commit), index: Number(index), sink: r.sink, value: r.value };
      })
      .sort((a, b) =>
        a.shard < b.shard ? -1 : a.shard > b.shard ? 1 : a.commit - b.commit || a.index - b.index,
      );
    const results = new Results();
    results.add(rows.map((r) => ({ sink: r.sink, value: JSON.parse(r.value) as unknown })));
    return {
      seconds,
      commits: backend.commits,
      stateWrites: backend.stateWrites,
      finals: results.finals,
      results: results.results,
      late: results.late,
      deadLetters: results.deadLetters,
    };
  } finally {
    await embedded.close();
  }
}

// ---------------------------------------------------------------------------------------------

let totalRecords = 0;

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const fmt = (n: number, digits = 0): string =>
  n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** Compares two runs' outputs; returns a description of the first difference. */
function difference(a: RunResult, b: RunResult): string | undefined {
  if (a.late !== b.late) return `late events ${a.late} vs ${b.late}`;
  if (a.deadLetters !== b.deadLetters) return `dead letters ${a.deadLetters} vs ${b.deadLetters}`;
  if (a.results !== b.results) return `window results emitted ${a.results} vs ${b.results}`;
  if (a.finals.size !== b.finals.size) return `windows ${a.finals.size} vs ${b.finals.size}`;
  for (const [window, views] of a.finals) {
    if (b.finals.get(window) !== views) return `window ${window}: ${views} vs ${b.finals.get(window)} views`;
  }
  return undefined;
}

async function main(): Promise<void> {
  const dir = process.env.BENCH_DIR || mkdtempSync(join(os.tmpdir(), 'floe-bench-embedded-'));
  const cleanup = process.env.BENCH_DIR === undefined || process.env.BENCH_DIR === '';
  try {
    console.log(
      `floe embedded benchmark — examples/page-views.ts, ${fmt(EVENTS)} clicks + ${POISON} invalid records, ${SHARDS} shards, batches of ${fmt(BATCH)}`,
    );
    console.log(
      `Node ${process.version} (${process.arch}), ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.cpus().length} cores, load avg ${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
    );

    // --- Input (not timed): clicks partitioned by page, arriving 3 hours ago at 200 events/s of
    // event time, so idleness (1 minute) fires every window once a shard is caught up.
    const t0 = performance.now();
    const log = LocalLog.open(databasePath(dir));
    await log.ensureStream(STREAM, { shards: SHARDS, retentionMs: Number.POSITIVE_INFINITY });
    if ((await log.describeStream(STREAM)).records === 0) {
      const records = [
        ...clickRecords({
          events: EVENTS,
          rate: 200,
          users: 2_000,
          pages: 50,
          outOfOrder: 0.05,
          late: 0.005,
          seed: 42,
          partitionKey: 'page',
          poison: POISON,
          start: Math.floor(Date.now() / 60_000) * 60_000 - 3 * 3600_000,
        }),
      ];
      for (let i = 0; i < records.length; i += 10_000) await log.append(STREAM, records.slice(i, i + 10_000));
    }
    // The same records, per shard in log order, for the in-memory engine.
    const shards = new Map<string, SourceRecord[]>();
    for (const row of log.db
      .prepare<
        [string],
        { seq: number; shard_id: string; partition_key: string; data: Buffer; arrival: number }
      >(
        'SELECT seq, shard_id, partition_key, data, arrival FROM floe_log_record WHERE stream = ? ORDER BY seq',
      )
      .iterate(STREAM)) {
      let list = shards.get(row.shard_id);
      if (list === undefined) {
        list = [];
        shards.set(row.shard_id, list);
      }
      list.push({
        data: new Uint8Array(row.data.buffer, row.data.byteOffset, row.data.byteLength),
        partitionKey: row.partition_key,
        sequenceNumber: formatSequenceNumber(row.seq),
        arrivalTime: row.arrival,
      });
    }
    await log.close();
    totalRecords = [...shards.values()].reduce((n, s) => n + s.length, 0);
    if (totalRecords !== EVENTS + POISON)
      fail(`the log holds ${totalRecords} records, expected ${EVENTS + POISON}`);
    console.log(
      `input: ${fmt(totalRecords)} records in ${dir} (${[...shards.values()].map((s) => fmt(s.length)).join(' / ')} per shard), prepared in ${((performance.now() - t0) / 1000).toFixed(1)} s (not timed)\n`,
    );

    // --- Rounds interleave the two backends, so background load affects both alike. Every
    // embedded run is a new job id (fresh state, checkpoints and output table) on the same log.
    const memory: RunResult[] = [];
    const embedded: RunResult[] = [];
    let reference: RunResult | undefined;
    let run = 0;
    for (let round = 0; round < WARMUP + RUNS; round++) {
      const m = await runMemory(shards);
      const e = await runEmbedded(dir, `bench-${process.pid}-${++run}`);
      for (const [name, r] of [
        ['in-memory', m],
        ['embedded', e],
      ] as const) {
        reference ??= r;
        const diff = difference(reference, r);
        if (diff !== undefined) fail(`${name} results differ from the first run's: ${diff}`);
      }
      if (round >= WARMUP) {
        memory.push(m);
        embedded.push(e);
      }
      console.log(
        `  round ${round + 1}/${WARMUP + RUNS}${round < WARMUP ? ' (warm-up)' : ''}: in-memory ${m.seconds.toFixed(2)} s, embedded ${e.seconds.toFixed(2)} s`,
      );
    }

    // --- Report.
    const rows = [
      { name: 'in-memory engine (ShardTask + MemoryBackend)', runs: memory },
      { name: 'embedded (SQLite log + SqliteBackend + SqliteTableSink, runJob)', runs: embedded },
    ].map(({ name, runs }) => {
      const seconds = median(runs.map((r) => r.seconds));
      const first = runs[0]!;
      return {
        name,
        seconds,
        rate: totalRecords / seconds,
        commits: (first.commits / totalRecords) * 1000,
        writes: (first.stateWrites / totalRecords) * 1000,
      };
    });
    const width = Math.max(...rows.map((r) => r.name.length));
    console.log('');
    console.log(
      `${'backend'.padEnd(width)}  ${'events/s'.padStart(10)}  ${'seconds'.padStart(8)}  ${'commits/1k'.padStart(10)}  ${'state writes/1k'.padStart(15)}`,
    );
    for (const r of rows) {
      console.log(
        `${r.name.padEnd(width)}  ${fmt(r.rate).padStart(10)}  ${r.seconds.toFixed(2).padStart(8)}  ${fmt(r.commits, 2).padStart(10)}  ${fmt(r.writes, 1).padStart(15)}`,
      );
    }
    const [mem, emb] = rows as [(typeof rows)[0], (typeof rows)[0]];
    console.log(
      `\nratio: the embedded backend runs at ${((emb.rate / mem.rate) * 100).toFixed(1)}% of the in-memory engine's throughput (${(mem.rate / emb.rate).toFixed(1)}x slower); medians of ${RUNS} run(s) after ${WARMUP} warm-up`,
    );
    const r = reference!;
    const counted = [...r.finals.values()].reduce((n, v) => n + v, 0);
    console.log(
      `results: identical in every run — ${fmt(r.finals.size)} windows (${fmt(r.results)} results incl. re-fires), ${fmt(counted)} counted + ${fmt(r.late)} late + ${fmt(r.deadLetters)} dead letters = ${fmt(counted + r.late + r.deadLetters)} of ${fmt(totalRecords)} records`,
    );
    if (counted + r.late + r.deadLetters !== totalRecords) {
      fail(`counted + late + dead letters = ${counted + r.late + r.deadLetters}, expected ${totalRecords}`);
    }
    console.log(
      `SQLite file: ${fmt(statSync(databasePath(dir)).size / 2 ** 20, 1)} MB after ${run} embedded runs`,
    );
  } finally {
    if (cleanup) rmSync(dir, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (error) {
  console.error(`\nBENCH FAILED: ${error instanceof BenchFailure ? error.message : error}`);
  if (!(error instanceof BenchFailure)) console.error(error);
  process.exitCode = 1;
}
