/**
 * Core engine benchmark: floe's ShardTask against a hand-written single-purpose loop, measured
 * in the same run.
 *
 *   npm run bench:core   (= node --max-semi-space-size=64 --import tsx bench/core/run.ts)
 *
 * 64 MiB semi-spaces are what floe's Lambda worker runs with at its default 1 GiB (see
 * nodeOptions in cdk/stream-processor.ts); `npx tsx bench/core/run.ts` measures V8's defaults.
 *
 * Environment: BENCH_EVENTS (default 1,000,000), BENCH_RUNS (timed runs per scenario, default 3,
 * the median is reported), BENCH_WARMUP (untimed runs per scenario first, default 1),
 * BENCH_BATCH (records per processBatch call, default 10,000), BENCH_ONLY (a regular expression:
 * run only the floe scenarios whose name matches, e.g. "tumbling.*1 s"; the hand-written loops
 * always run).
 *
 * Each pipeline (tumbling with the hand-written loop, sliding, session) is measured in its own
 * child process with the same flags, as a worker runs one pipeline per process; the table is
 * printed by the parent.
 *
 * Every scenario feeds the same pre-generated events (objects, so JSON parsing is excluded:
 * passthroughDeserializer) through a ShardTask with a MemoryBackend, then advances the watermark
 * to +inf so every window fires. Commits go to the MemoryBackend under a lease, and their outputs
 * are then marked published, as a worker does:
 * - "commit every batch": one commit per batch of BENCH_BATCH records (a worker with
 *   commitIntervalMs 0, one commit per read);
 * - "1 s commit interval": batches accumulate until a second of wall-clock time has passed since
 *   the first uncommitted one, then commit (the deployed worker's default `commitInterval`), and
 *   once more at the end.
 * The hand-written loop computes the same tumbling counts with the same watermark and firing
 * semantics; the bench fails if its results differ from floe's. A second hand-written loop adds
 * the durability floe's per-batch commits provide: after every batch it writes each changed
 * key's state as JSON text into a map, as floe's MemoryBackend holds it. It shows what a commit
 * every 10,000 records costs before any engine is involved.
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import {
  type AggregateFunction,
  type BatchResult,
  boundedOutOfOrderness,
  compile,
  count,
  MAX_WATERMARK,
  MemoryBackend,
  minutes,
  type Output,
  type PipelinePlan,
  passthroughDeserializer,
  pipeline,
  ShardTask,
  type SourceRecord,
  seconds,
  seededRandom,
  serializeCheckpoint,
  session,
  sliding,
  tumbling,
  type WindowAssigner,
  type WindowResult,
} from '../../lib/core/index.ts';
import { envInt } from '../env.ts';

interface Ev {
  readonly key: string;
  readonly ts: number;
  readonly v: number;
}

const EVENTS = envInt('BENCH_EVENTS', 1_000_000);
const RUNS = envInt('BENCH_RUNS', 3);
const WARMUP = envInt('BENCH_WARMUP', 1, 0);
const BATCH = envInt('BENCH_BATCH', 10_000);
const KEYS = 10_000;
const BOUND = seconds(5);
/** Event time advances 1 ms per event (1,000 events/s); timestamps jitter back by up to 2 s. */
const JITTER = 2_000;
/** A few events are 3 minutes late: dropped to the late side output by every window kind. */
const LATE_EVERY = 5_000;
const LATE_BY = minutes(3);
const BASE = Date.UTC(2024, 0, 1);
const SHARD = 'shardId-000000000000';
const TUMBLE = minutes(1);
const HAND = 'hand-written loop, tumbling 1 min count';
const DURABLE = 'hand-written loop + commit every batch';
const TUMBLING = 'tumbling 1 min count';

// ---------------------------------------------------------------------------------------------
// Data (generated before any timing)

function generate(n: number): { events: Ev[]; batches: SourceRecord[][] } {
  const rand = seededRandom(42);
  const keys = Array.from({ length: KEYS }, (_, i) => `user-${i}`);
  const events: Ev[] = new Array(n);
  const batches: SourceRecord[][] = [];
  let batch: SourceRecord[] = [];
  for (let i = 0; i < n; i++) {
    const key = keys[Math.floor(rand() * KEYS)]!;
    let ts = BASE + i - Math.floor(rand() * JITTER);
    if (i % LATE_EVERY === LATE_EVERY - 1) ts -= LATE_BY;
    const e: Ev = { key, ts, v: i };
    events[i] = e;
    batch.push({
      data: e,
      partitionKey: key,
      sequenceNumber: String(i + 1).padStart(21, '0'),
      arrivalTime: BASE + i,
    });
    if (batch.length === BATCH) {
      batches.push(batch);
      batch = [];
    }
  }
  if (batch.length > 0) batches.push(batch);
  return { events, batches };
}

// ---------------------------------------------------------------------------------------------
// floe

function plan(name: string, assigner: WindowAssigner): PipelinePlan {
  const p = pipeline(name);
  p.source<Ev>({ deserializer: passthroughDeserializer() })
    .withTimestamps((e) => e.ts, boundedOutOfOrderness(BOUND))
    .keyBy((e) => e.key)
    .window(assigner)
    .aggregate(count<Ev>() as AggregateFunction<Ev, number, number>)
    .sink('out');
  return compile(p);
}

interface RunResult {
  /** Wall-clock seconds. */
  readonly seconds: number;
  /** Commits made (state written durably). */
  readonly commits: number;
  /** Process CPU seconds (user + system, all threads: includes V8's parallel GC helpers). */
  readonly cpu: number;
  readonly results: WindowResult<string, number>[];
  readonly late: number;
}

/** Largest checkpoint (serialized) seen by an untimed probe run, per pipeline. */
const checkpointBytes = new Map<PipelinePlan, number>();

/** How often a floe run commits (see the header comment). */
type CommitMode = 'every batch' | 'interval';
/** The deployed worker's default commit interval (cdk/stream-processor.ts `commitInterval`). */
const COMMIT_INTERVAL_MS = 1_000;

async function runFloe(
  p: PipelinePlan,
  batches: SourceRecord[][],
  mode: CommitMode,
  probe = false,
): Promise<RunResult> {
  const backend = new MemoryBackend();
  const task = new ShardTask(p, SHARD);
  const lease = await backend.acquireLease(SHARD, 'bench', 0, 2 ** 40);
  // Keep only the results (as the hand-written loop does); output envelopes die with the batch.
  const results: WindowResult<string, number>[] = [];
  let late = 0;
  let commits = 0;
  const commit = async (r: BatchResult): Promise<void> => {
    for (const o of r.outputs) {
      if (o.sink === 'out') results.push(o.value as WindowResult<string, number>);
      else if (o.sink === 'floe.late') late++;
      else throw new Error(`unexpected output to sink ${o.sink}: ${JSON.stringify(o.value)}`);
    }
    if (probe) {
      const bytes = serializeCheckpoint(r.checkpoint).length;
      checkpointBytes.set(p, Math.max(checkpointBytes.get(p) ?? 0, bytes));
    }
    if (!r.changed) return;
    await backend.commit(lease, r);
    commits++;
    if (r.outputs.length > 0) await backend.markPublished(SHARD, r.outputs.map(idOf));
  };
  let now = 0;
  let uncommittedSince: number | undefined;
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  for (const batch of batches) {
    now = batch[batch.length - 1]!.arrivalTime;
    if (mode === 'every batch') {
      await commit(await task.processBatch(batch, backend, now));
      continue;
    }
    await task.process(batch, backend, now);
    const t = performance.now();
    uncommittedSince ??= t;
    if (t - uncommittedSince >= COMMIT_INTERVAL_MS) {
      await commit(task.takeCommit());
      uncommittedSince = undefined;
    }
  }
  await commit(await task.processWatermark(MAX_WATERMARK, backend, now));
  const elapsed = (performance.now() - start) / 1000;
  const cpu = cpuSeconds(cpu0);
  return { seconds: elapsed, commits, cpu, results, late };
}

function cpuSeconds(since: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(since);
  return (d.user + d.system) / 1e6;
}

const idOf = (o: Output): string => o.id;

// ---------------------------------------------------------------------------------------------
// Hand-written tumbling count: same semantics as floe's tumbling window with allowed lateness 0.
// WM = max ts - bound - 1, advanced after each element; an element whose window's last
// millisecond is <= WM is late; a window fires when WM >= end - 1.

type OpenWindows = Map<number, Map<string, number>>;

/** Fires (in start order) every open window whose last millisecond is <= limit; returns the next one's. */
function fireWindows(
  open: OpenWindows,
  size: number,
  limit: number,
  results: WindowResult<string, number>[],
): number {
  const due: number[] = [];
  let next = Number.POSITIVE_INFINITY;
  for (const start of open.keys()) {
    const last = start + size - 1;
    if (last <= limit) due.push(start);
    else if (last < next) next = last;
  }
  due.sort((a, b) => a - b);
  for (const start of due) {
    const window = { start, end: start + size };
    for (const [key, n] of open.get(start)!) results.push({ key, window, result: n });
    open.delete(start);
  }
  return next;
}

/** Window start of `ts` for windows of `size` ms aligned to the epoch (negative ts included). */
function startOf(ts: number, size: number): number {
  const rem = ts % size;
  return rem < 0 ? ts - (rem + size) : ts - rem;
}

function handTumbling(events: readonly Ev[], size: number, bound: number): RunResult {
  const cpu0 = process.cpuUsage();
  const start0 = performance.now();
  const open: OpenWindows = new Map();
  const results: WindowResult<string, number>[] = [];
  let late = 0;
  let maxTs = Number.NEGATIVE_INFINITY;
  let wm = Number.NEGATIVE_INFINITY;
  let nextFire = Number.POSITIVE_INFINITY; // smallest end - 1 of an open window

  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const ts = e.ts;
    const start = startOf(ts, size);
    if (start + size - 1 <= wm) {
      late++;
    } else {
      let counts = open.get(start);
      if (counts === undefined) {
        counts = new Map();
        open.set(start, counts);
        if (start + size - 1 < nextFire) nextFire = start + size - 1;
      }
      counts.set(e.key, (counts.get(e.key) ?? 0) + 1);
    }
    if (ts > maxTs) {
      maxTs = ts;
      const w = ts - bound - 1;
      if (w > wm) {
        wm = w;
        if (nextFire <= wm) nextFire = fireWindows(open, size, wm, results);
      }
    }
  }
  fireWindows(open, size, Number.POSITIVE_INFINITY, results);
  return { seconds: (performance.now() - start0) / 1000, commits: 0, cpu: cpuSeconds(cpu0), results, late };
}

/**
 * The hand-written loop made durable the way floe's per-batch commits are: after every
 * `commitEvery` events (and at the end) each key whose windows changed is written as JSON text,
 * `{"k":<key>,"s":{"w":[[<start>,<count>],...]}}` (deleted when it has none), into a map, and the
 * fired results are handed over as that commit's outputs. It keeps no timers or positions: a
 * floor for what a commit every `commitEvery` events costs, not a recoverable design. Its loop
 * repeats handTumbling's on purpose, so the reference loop carries no commit branch.
 */
function handTumblingDurable(
  events: readonly Ev[],
  size: number,
  bound: number,
  commitEvery: number,
): RunResult {
  const cpu0 = process.cpuUsage();
  const start0 = performance.now();
  const open: OpenWindows = new Map();
  const results: WindowResult<string, number>[] = [];
  const store = new Map<string, string>();
  const dirty = new Set<string>();
  /** Per key: its store address and the text before its windows, built once. */
  const heads = new Map<string, { address: string; head: string }>();
  const startText = new Map<number, string>();
  let commits = 0;
  let fired = 0; // results[0..fired) are committed outputs
  let late = 0;
  let maxTs = Number.NEGATIVE_INFINITY;
  let wm = Number.NEGATIVE_INFINITY;
  let nextFire = Number.POSITIVE_INFINITY;

  const commit = (): void => {
    for (let i = fired; i < results.length; i++) dirty.add(results[i]!.key);
    fired = results.length;
    for (const key of dirty) {
      let h = heads.get(key);
      if (h === undefined) {
        const json = JSON.stringify(key);
        h = { address: `op/${json}`, head: `{"k":${json},"s":{"w":[` };
        heads.set(key, h);
      }
      let rows = '';
      for (const [start, counts] of open) {
        const n = counts.get(key);
        if (n === undefined) continue;
        let text = startText.get(start);
        if (text === undefined) {
          text = String(start);
          startText.set(start, text);
        }
        rows += `${rows === '' ? '[' : ',['}${text},${n}]`;
      }
      if (rows === '') store.delete(h.address);
      else store.set(h.address, `${h.head}${rows}]}}`);
    }
    dirty.clear();
    commits++;
  };

  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const ts = e.ts;
    const start = startOf(ts, size);
    if (start + size - 1 <= wm) {
      late++;
    } else {
      let counts = open.get(start);
      if (counts === undefined) {
        counts = new Map();
        open.set(start, counts);
        if (start + size - 1 < nextFire) nextFire = start + size - 1;
      }
      counts.set(e.key, (counts.get(e.key) ?? 0) + 1);
      dirty.add(e.key);
    }
    if (ts > maxTs) {
      maxTs = ts;
      const w = ts - bound - 1;
      if (w > wm) {
        wm = w;
        if (nextFire <= wm) nextFire = fireWindows(open, size, wm, results);
      }
    }
    if ((i + 1) % commitEvery === 0) commit();
  }
  fireWindows(open, size, Number.POSITIVE_INFINITY, results);
  commit();
  if (store.size !== 0)
    throw new Error(`durable loop: ${store.size} keys hold state after the last window fired`);
  return { seconds: (performance.now() - start0) / 1000, commits, cpu: cpuSeconds(cpu0), results, late };
}

// ---------------------------------------------------------------------------------------------
// Verification

function fnv1a(s: string, h = 0x811c9dc5): number {
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

interface Digest {
  readonly windows: number;
  readonly total: number;
  readonly late: number;
  /** Order-independent: sum and xor of a hash of every (key, start, end, count) tuple. */
  readonly sum: number;
  readonly xor: number;
}

function digest(r: RunResult): Digest {
  let total = 0;
  let sum = 0;
  let xor = 0;
  for (const { key, window, result } of r.results) {
    total += result;
    const h = fnv1a(`${key}|${window.start}|${window.end}|${result}`);
    sum = (sum + h) % 2 ** 48;
    xor = (xor ^ h) >>> 0;
  }
  return { windows: r.results.length, total, late: r.late, sum, xor };
}

const sameDigest = (a: Digest, b: Digest): boolean =>
  a.windows === b.windows && a.total === b.total && a.late === b.late && a.sum === b.sum && a.xor === b.xor;

const show = (d: Digest): string =>
  `windows=${d.windows} counted=${d.total} late=${d.late} checksum=${d.sum.toString(16)}/${d.xor.toString(16)}`;

// ---------------------------------------------------------------------------------------------

interface Scenario {
  readonly name: string;
  readonly group: string;
  readonly run: (probe: boolean) => Promise<RunResult>;
  readonly plan?: PipelinePlan;
  readonly times: number[];
  readonly cpu: number[];
  /** Commits per timed run. */
  readonly commits: number[];
  digest?: Digest;
  /** Largest serialized checkpoint (bytes), from the warm-up round. */
  checkpoint?: number;
}

/** What a group's child process reports per scenario. */
interface Measured {
  readonly name: string;
  readonly times: number[];
  readonly cpu: number[];
  readonly commits: number[];
  readonly digest: Digest;
  readonly checkpoint?: number;
}

function kb(bytes: number | undefined): string {
  return bytes === undefined ? '-' : `${(bytes / 1024).toFixed(0)} KB`;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function fail(message: string): never {
  console.error(`\nBENCH FAILED: ${message}`);
  process.exit(1);
}

async function main(): Promise<void> {
  const child = process.env.BENCH_CHILD_GROUP;
  if (child === undefined) {
    console.log(
      `floe core benchmark — ${EVENTS.toLocaleString('en-US')} events, ${KEYS} keys, batches of ${BATCH}`,
    );
    console.log(
      `Node ${process.version} (${process.arch}), ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.cpus().length} cores, load avg ${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
    );
    // V8 flags change the results (the young generation's size sets how much survives a
    // scavenge), so print them: both floe and the hand-written loop run under the same ones.
    const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(' ')].filter((f) =>
      f.startsWith('--max-'),
    );
    console.log(`V8 heap flags: ${flags.join(' ') || 'none (defaults)'}`);
  }
  // Each group (pipeline) runs in its own process, as a worker runs one pipeline: in one process
  // the other pipelines' code would make the engine's call sites polymorphic and slow them all.
  let events: Ev[] = [];
  let batches: SourceRecord[][] = [];
  if (child !== undefined) {
    const t0 = performance.now();
    ({ events, batches } = generate(EVENTS));
    console.error(`[${child}] generated in ${((performance.now() - t0) / 1000).toFixed(2)} s (not timed)`);
  }

  const tumblingPlan = plan('bench-tumbling', tumbling({ size: TUMBLE }));
  const slidingPlan = plan('bench-sliding', sliding({ size: minutes(1), slide: seconds(10) }));
  const sessionPlan = plan('bench-session', session({ gap: seconds(30) }));

  const floe = (name: string, group: string, p: PipelinePlan, mode: CommitMode): Scenario => ({
    name: `floe ${name}, ${mode === 'every batch' ? 'commit every batch' : '1 s commit interval'}`,
    group,
    run: (probe) => runFloe(p, batches, mode, probe),
    plan: p,
    times: [],
    cpu: [],
    commits: [],
  });
  const scenarios: Scenario[] = [
    {
      name: HAND,
      group: 'tumbling',
      run: async () => handTumbling(events, TUMBLE, BOUND),
      times: [],
      cpu: [],
      commits: [],
    },
    {
      name: DURABLE,
      group: 'tumbling',
      run: async () => handTumblingDurable(events, TUMBLE, BOUND, BATCH),
      times: [],
      cpu: [],
      commits: [],
    },
    floe(TUMBLING, 'tumbling', tumblingPlan, 'every batch'),
    floe(TUMBLING, 'tumbling', tumblingPlan, 'interval'),
    floe('sliding 1 min / 10 s count', 'sliding', slidingPlan, 'every batch'),
    floe('sliding 1 min / 10 s count', 'sliding', slidingPlan, 'interval'),
    floe('session gap 30 s count', 'session', sessionPlan, 'every batch'),
    floe('session gap 30 s count', 'session', sessionPlan, 'interval'),
  ];

  const only = process.env.BENCH_ONLY;
  if (only !== undefined && only !== '') {
    const re = new RegExp(only);
    // The hand-written loops always run: they are the references results are checked against.
    for (let i = scenarios.length - 1; i > 0; i--) {
      const s = scenarios[i]!;
      if (!s.name.startsWith('hand-written') && !re.test(s.name)) scenarios.splice(i, 1);
    }
  }

  if (child === undefined) {
    // Parent: one child process per group, with this process's flags; results come back as JSON.
    const groups = [...new Set(scenarios.map((s) => s.group))];
    for (const group of groups) {
      const run = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
        env: { ...process.env, BENCH_CHILD_GROUP: group },
        stdio: ['ignore', 'pipe', 'inherit'],
        maxBuffer: 1 << 24,
      });
      if (run.status !== 0) fail(`the ${group} group exited with status ${run.status ?? run.signal}`);
      const measured = JSON.parse(run.stdout.toString()) as Measured[];
      for (const m of measured) {
        const s = scenarios.find((x) => x.name === m.name);
        if (s === undefined) fail(`unknown scenario "${m.name}" from the ${group} group`);
        s.times.push(...m.times);
        s.cpu.push(...m.cpu);
        s.commits.push(...m.commits);
        s.digest = m.digest;
        s.checkpoint = m.checkpoint;
      }
    }
  } else {
    const mine = scenarios.filter((s) => s.group === child);
    // Rounds interleave the group's scenarios, so background load affects all of them alike.
    for (let round = 0; round < WARMUP + RUNS; round++) {
      const warm = round < WARMUP;
      const label = warm ? `warm-up ${round + 1}/${WARMUP}` : `run ${round - WARMUP + 1}/${RUNS}`;
      let progress = `[${child}] ${label}:`;
      for (const s of mine) {
        // The warm-up rounds (untimed) also measure checkpoint sizes.
        const r = await s.run(warm);
        const d = digest(r);
        // Every run of a group must give identical results (commit or not, any round).
        const ref = scenarios.find((o) => o.group === s.group && o.digest !== undefined)?.digest;
        if (ref !== undefined && !sameDigest(ref, d)) {
          fail(`"${s.name}" produced different results:\n  expected ${show(ref)}\n  got      ${show(d)}`);
        }
        s.digest = d;
        if (!warm) {
          s.times.push(r.seconds);
          s.cpu.push(r.cpu);
          s.commits.push(r.commits);
        }
        if (s.plan !== undefined) s.checkpoint = checkpointBytes.get(s.plan);
        progress += ` ${r.seconds.toFixed(2)}s`;
      }
      console.error(progress);
    }
    const measured: Measured[] = mine.map((s) => ({
      name: s.name,
      times: s.times,
      cpu: s.cpu,
      commits: s.commits,
      digest: s.digest!,
      ...(s.checkpoint === undefined ? {} : { checkpoint: s.checkpoint }),
    }));
    process.stdout.write(JSON.stringify(measured));
    return;
  }

  const hand = scenarios[0]!;
  const handRate = EVENTS / median(hand.times);
  const durableRow = scenarios.find((s) => s.name === DURABLE);
  const durableRate = durableRow === undefined ? Number.NaN : EVENTS / median(durableRow.times);
  const rows = scenarios.map((s) => {
    const secs = median(s.times);
    const rate = EVENTS / secs;
    return {
      scenario: s.name,
      events: EVENTS.toLocaleString('en-US'),
      seconds: secs.toFixed(3),
      best: Math.min(...s.times).toFixed(3),
      cpu: median(s.cpu).toFixed(3),
      rate: Math.round(rate).toLocaleString('en-US'),
      ratio: s.group === 'tumbling' ? (rate / handRate).toFixed(2) : '-',
      durable: s.group === 'tumbling' && s !== hand ? (rate / durableRate).toFixed(2) : '-',
      commits: s === hand ? '-' : String(median(s.commits)),
      windows: s.digest!.windows.toLocaleString('en-US'),
      checkpoint: kb(s.checkpoint),
    };
  });
  const header = {
    scenario: 'scenario',
    events: 'events',
    seconds: 'median s',
    best: 'best s',
    cpu: 'cpu s',
    rate: 'events/s',
    ratio: 'ratio',
    durable: 'vs durable',
    commits: 'commits',
    windows: 'windows fired',
    checkpoint: 'max checkpoint',
  };
  const cols = Object.keys(header) as Array<keyof typeof header>;
  const width = Object.fromEntries(
    cols.map((c) => [c, Math.max(header[c].length, ...rows.map((r) => r[c].length))]),
  ) as Record<keyof typeof header, number>;
  const line = (r: typeof header): string =>
    cols.map((c, i) => (i === 0 ? r[c].padEnd(width[c]) : r[c].padStart(width[c]))).join('  ');
  console.log(`\n${line(header)}`);
  console.log(cols.map((c) => '-'.repeat(width[c])).join('  '));
  for (const r of rows) console.log(line(r));

  console.log(
    `\nMedian of ${RUNS} runs after ${WARMUP} warm-up round(s); events/s and ratios use the median wall time.\n` +
      `ratio = events/s ÷ the hand-written loop's (tumbling); vs durable = events/s ÷ the hand-written loop's with a commit every batch.\n` +
      `commits = commits per run (median): every batch of ${BATCH.toLocaleString('en-US')} records, or each time ${COMMIT_INTERVAL_MS} ms of wall-clock time has passed, plus the last.\n` +
      `cpu s = process CPU time (median), all threads. max checkpoint = largest serialized shard checkpoint (timer chunks are state entries; the checkpoint keeps a short tail), from the warm-up round.`,
  );
  console.log(`verified: every tumbling run = the hand-written loop (${show(hand.digest!)})`);
  const check = (ok: boolean, what: string): string => `${ok ? 'met' : 'MISSED'}: ${what}`;
  for (const mode of ['every batch', 'interval'] as const) {
    const row = scenarios.find((s) => s.name === floe(TUMBLING, 'tumbling', tumblingPlan, mode).name);
    if (row === undefined) continue;
    const rate = EVENTS / median(row.times);
    console.log(
      `targets, ${row.name}: ${check(rate / handRate >= 0.5, '>= 0.5 x hand-written')}; ${check(rate >= 1_000_000, '>= 1M events/s')}`,
    );
  }
}

await main();
