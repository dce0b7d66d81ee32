/**
 * `floe demo` (what `npm start` runs): generate a clickstream, run the page-view and session
 * examples on the embedded backend as two worker processes, kill one mid-run with SIGKILL and
 * resume it, then summarize the results and check that every event was counted exactly once.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigurationError, DEAD_LETTER_SINK, DEFAULT_LATE_SINK } from '../core/index.ts';
import { databasePath } from '../embedded/job.ts';
import { outputTableName } from '../embedded/sinks.ts';
import { openSqlite } from '../embedded/sqlite.ts';
import { jobStatus } from '../embedded/status.ts';
import { bar, formatCount, formatTime, parseFlags, positiveInt, UsageError } from './args.ts';
import { clickRecords, produceRecords } from './produce.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FLOE = join(ROOT, 'bin/floe.js');

export const DEMO_HELP = `floe demo [--events N] [--data-dir <dir>] [--no-kill]

Generates a clickstream (default 200,000 events over 4 shards, ~5% out of order, ~0.5% late),
runs examples/page-views.ts and examples/user-sessions.ts on the embedded backend as two
worker processes, kills the page-view worker with SIGKILL once it has processed 40% of its
records (unless --no-kill, or it finishes first) and resumes it, and prints a summary. Data goes
to --data-dir (default .floe/demo, deleted and recreated on every run; a directory holding
anything the demo did not write is refused).`;

interface DemoJob {
  readonly job: string;
  readonly module: string;
  readonly partitionKey: 'page' | 'user';
  child?: ChildProcess;
  exit?: Promise<number | null>;
  restarts: number;
}

function startWorker(job: DemoJob, dataDir: string): void {
  const child = spawn(
    process.execPath,
    // A short lease TTL so the resumed worker takes over the killed one's shards quickly.
    [
      FLOE,
      'run',
      job.module,
      '--data-dir',
      dataDir,
      '--until-idle',
      '--progress',
      'none',
      '--lease-ttl',
      '2000',
    ],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  job.child = child;
  job.exit = new Promise((resolveExit) =>
    child.on('exit', (code, signal) => {
      if (code !== 0 && signal !== 'SIGKILL')
        process.stderr.write(`\n${job.job} worker failed:\n${stderr}\n`);
      resolveExit(signal === 'SIGKILL' ? null : code);
    }),
  );
}

/** Written into the data directory the demo creates: only such a directory is deleted again. */
const DEMO_MARKER = '.floe-demo';
/** What the demo's SQLite database leaves in its directory. */
const DATABASE_FILES = ['floe.db', 'floe.db-wal', 'floe.db-shm'];
const DEMO_STREAMS = ['page-views', 'user-sessions'];

/**
 * Empties the demo's data directory. The demo deletes it whole, so it refuses a directory it did
 * not create (a `--data-dir .` or `--data-dir .floe` would otherwise take the user's files or
 * jobs with it): only a missing or empty one, one with the demo's marker, or one holding nothing
 * but a database of the demo's two streams (left by a demo before the marker) is recreated.
 */
function recreateDemoDir(dataDir: string): void {
  if (existsSync(dataDir)) {
    if (!statSync(dataDir).isDirectory()) {
      throw new ConfigurationError(`--data-dir ${dataDir} is not a directory; pass a new directory`);
    }
    const entries = readdirSync(dataDir);
    if (entries.length > 0 && !entries.includes(DEMO_MARKER) && !holdsOnlyDemoDatabase(dataDir, entries)) {
      throw new ConfigurationError(
        `--data-dir ${dataDir} holds files the demo did not write (${entries.slice(0, 5).join(', ')}${entries.length > 5 ? ', ...' : ''}); the demo deletes and recreates its data directory, so pass a new or empty directory (default .floe/demo)`,
      );
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(
    join(dataDir, DEMO_MARKER),
    'written by floe demo: it deletes this directory on its next run\n',
  );
}

function holdsOnlyDemoDatabase(dataDir: string, entries: readonly string[]): boolean {
  if (!entries.includes('floe.db') || entries.some((e) => !DATABASE_FILES.includes(e))) return false;
  let db: ReturnType<typeof openSqlite> | undefined;
  try {
    db = openSqlite(databasePath(dataDir));
    const table = db.prepare('SELECT 1 FROM sqlite_master WHERE name = ?').get('floe_log_stream');
    if (table === undefined) return false;
    const streams = db
      .prepare<[], { name: string }>('SELECT name FROM floe_log_stream ORDER BY name')
      .all()
      .map((r) => r.name);
    return streams.join() === DEMO_STREAMS.join();
  } catch {
    return false; // not a database the demo could have written
  } finally {
    db?.close();
  }
}

export async function runDemo(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('demo', {
    args,
    allowPositionals: true,
    options: {
      events: { type: 'string' },
      'data-dir': { type: 'string' },
      'no-kill': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  if (positionals.length > 0)
    throw new UsageError(`demo takes no positional arguments; received "${positionals[0]}"`);
  const events = positiveInt('--events', values.events, 200_000);
  const dataDir = resolve(values['data-dir'] ?? '.floe/demo');
  recreateDemoDir(dataDir);
  const tty = Boolean(process.stdout.isTTY);
  const out = (line: string): void => {
    process.stdout.write(`${line}\n`);
  };

  out(`floe demo: ${formatCount(events)} clicks, 4 shards, embedded backend in ${dataDir}`);
  const jobs: DemoJob[] = [
    { job: 'page-views', module: 'examples/page-views.ts', partitionKey: 'page', restarts: 0 },
    { job: 'user-sessions', module: 'examples/user-sessions.ts', partitionKey: 'user', restarts: 0 },
  ];
  // One stream per job, partitioned by the job's key (keyBy must follow the partition key).
  const generated = Date.now();
  const poison = Math.max(1, Math.round(events / 10_000));
  for (const job of jobs) {
    await produceRecords(
      {
        dataDir,
        stream: job.job,
        shards: 4,
        retentionMs: Number.POSITIVE_INFINITY,
        onProgress: (written, total) => {
          if (tty)
            process.stdout.write(`\r  producing ${job.job.padEnd(14)} ${bar(written / (total ?? written))}`);
        },
      },
      clickRecords({
        events,
        rate: 40,
        users: 2_000,
        pages: 50,
        outOfOrder: 0.05,
        late: 0.005,
        seed: 42,
        partitionKey: job.partitionKey,
        poison,
        start: Date.UTC(2026, 0, 1, 9),
      }),
      events,
    );
    if (tty) process.stdout.write('\n');
  }
  out(
    `  produced ${formatCount(events + poison)} records per stream (incl. ${poison} invalid) in ${((Date.now() - generated) / 1000).toFixed(1)} s`,
  );

  const db = openSqlite(databasePath(dataDir));
  const started = Date.now();
  for (const job of jobs) startWorker(job, dataDir);
  const kill = values['no-kill'] ? undefined : jobs[0]!;
  let killed = false;
  let lastLines = 0;
  const total = events + poison;
  const render = (): void => {
    const lines: string[] = [];
    for (const job of jobs) {
      const status = jobStatus(db, job.job, job.job);
      const done = status.shards.reduce((n, s) => n + s.records - s.lag, 0);
      lines.push(`  ${job.job.padEnd(14)} ${bar(done / total)} ${formatCount(done)} records`);
      for (const s of status.shards) {
        lines.push(
          `    ${s.shardId}  watermark ${formatTime(s.checkpoint?.watermark ?? Number.NEGATIVE_INFINITY).padEnd(20)}  lag ${formatCount(s.lag).padStart(7)}`,
        );
      }
      // Kill only mid-run: a worker that has processed every record (or exited) is not killed.
      if (
        kill === job &&
        !killed &&
        done / total >= 0.4 &&
        done < total &&
        job.child !== undefined &&
        job.child.exitCode === null
      ) {
        killed = true;
        job.child.kill('SIGKILL');
        lines.push(
          `  ** killed the ${job.job} worker (SIGKILL) at ${formatCount(done)} records; a new worker takes over once its 2 s leases expire **`,
        );
        const exited = job.exit!;
        job.exit = exited.then(() => {
          job.restarts++;
          startWorker(job, dataDir);
          return job.exit!;
        });
      }
    }
    if (tty) {
      if (lastLines > 0) process.stdout.write(`\x1b[${lastLines}A`);
      process.stdout.write(lines.map((l) => `\x1b[2K${l}\n`).join(''));
      lastLines = lines.length;
    } else {
      for (const l of lines.filter((l) => l.includes('**'))) out(l);
    }
  };
  const timer = setInterval(render, 100);
  let codes: Array<number | null>;
  try {
    codes = await Promise.all(
      jobs.map(async (job) => {
        // Follow restarts: a killed worker's exit promise chains to its replacement's.
        for (;;) {
          const current = job.exit!;
          const code = await current;
          if (job.exit === current) return code;
        }
      }),
    );
  } finally {
    clearInterval(timer);
  }
  render();
  const elapsed = (Date.now() - started) / 1000;
  if (codes.some((c) => c !== 0)) {
    db.close();
    out('floe demo: a worker failed (see above)');
    return 1;
  }
  if (kill !== undefined && !killed)
    out(
      '  (the page-views worker finished before it could be killed: nothing was killed; try more --events)',
    );

  const exact = summarizeDemo(db, out, total, elapsed, dataDir, killed);
  db.close();
  if (!exact) {
    // The demo exists to show exactly-once results: counts that do not add up are a failure.
    out('floe demo: the page-views results do not account for every record exactly once (see above)');
    return 1;
  }
  return 0;
}

/**
 * Prints what the demo's jobs computed. Returns whether the page-views results account for
 * every record exactly once (final window counts + late + dead letters = records) and the job
 * finished its input.
 */
export function summarizeDemo(
  db: ReturnType<typeof openSqlite>,
  out: (line: string) => void,
  recordsPerStream: number,
  elapsed: number,
  dataDir: string,
  killed: boolean,
): boolean {
  const rows = (job: string, sink: string): Array<{ id: string; value: unknown }> =>
    db
      .prepare<[string], { id: string; value: string }>(
        `SELECT id, value FROM "${outputTableName(job)}" WHERE sink = ?`,
      )
      .all(sink)
      .map((r) => ({ id: r.id, value: JSON.parse(r.value) }));
  // Output ids order commits per shard; a re-fired window's last result is its final one.
  const commitOrder = (id: string): number[] => id.split('/').slice(-2).map(Number);
  const byId = (a: { id: string }, b: { id: string }): number => {
    const [ca, ia] = commitOrder(a.id);
    const [cb, ib] = commitOrder(b.id);
    return ca! - cb! || ia! - ib!;
  };

  interface Count {
    page: string;
    windowStart: number;
    views: number;
  }
  const finalCounts = new Map<string, Count>();
  for (const row of rows('page-views', 'page-view-counts').sort(byId)) {
    const c = row.value as Count;
    finalCounts.set(`${c.page}@${c.windowStart}`, c);
  }
  const counted = [...finalCounts.values()].reduce((n, c) => n + c.views, 0);
  const lateViews = rows('page-views', 'late-page-views').length;
  const pvDead = rows('page-views', DEAD_LETTER_SINK);
  const windows = [...new Set([...finalCounts.values()].map((c) => c.windowStart))].sort((a, b) => a - b);

  out('');
  out(
    `Processed 2 x ${formatCount(recordsPerStream)} records in ${elapsed.toFixed(1)} s (${formatCount(Math.round((2 * recordsPerStream) / elapsed))} records/s, both jobs, including process start-up${killed ? ' and the restart' : ''}).`,
  );
  out('');
  out(`Top pages, last 3 of ${windows.length} one-minute windows:`);
  for (const start of windows.slice(-3)) {
    const top = [...finalCounts.values()]
      .filter((c) => c.windowStart === start)
      .sort((a, b) => b.views - a.views || (a.page < b.page ? -1 : 1))
      .slice(0, 3)
      .map((c) => `${c.page} ${c.views}`)
      .join(', ');
    out(`  ${formatTime(start)}  ${top}`);
  }

  interface Session {
    user: string;
    start: number;
    end: number;
    events: number;
    pages: number;
  }
  const sessions = new Map<string, Session>();
  for (const row of rows('user-sessions', 'sessions').sort(byId)) {
    const s = row.value as Session;
    // A late event can merge sessions: the merged result supersedes the ones it contains.
    for (const [k, old] of sessions)
      if (old.user === s.user && old.start >= s.start && old.end <= s.end) sessions.delete(k);
    sessions.set(`${s.user}@${s.start}`, s);
  }
  const list = [...sessions.values()];
  const minutes = (s: Session): number => (s.end - s.start - 30 * 60_000) / 60_000;
  out('');
  out(
    `Sessions (30-minute gap): ${formatCount(list.length)} sessions of ${formatCount(new Set(list.map((s) => s.user)).size)} users; ` +
      `${(list.reduce((n, s) => n + s.events, 0) / list.length).toFixed(1)} clicks and ${(list.reduce((n, s) => n + minutes(s), 0) / list.length).toFixed(1)} active minutes on average; ` +
      `longest ${Math.max(...list.map(minutes)).toFixed(0)} minutes.`,
  );
  const sessionLate = rows('user-sessions', DEFAULT_LATE_SINK).length;
  const sessionDead = rows('user-sessions', DEAD_LETTER_SINK).length;
  out('');
  out(
    `Late events (beyond the allowed lateness): page views ${formatCount(lateViews)}, sessions ${formatCount(sessionLate)}.`,
  );
  out(
    `Dead letters: page views ${formatCount(pvDead.length)}, sessions ${formatCount(sessionDead)}` +
      (pvDead[0] === undefined
        ? '.'
        : ` (e.g. ${(pvDead[0].value as { reason: string }).reason}: ${(pvDead[0].value as { message: string }).message}).`),
  );
  const exact = counted + lateViews + pvDead.length === recordsPerStream;
  out('');
  out(
    `Exactly once: ${formatCount(counted)} counted in final windows + ${formatCount(lateViews)} late + ${pvDead.length} dead letters = ${formatCount(counted + lateViews + pvDead.length)} of ${formatCount(recordsPerStream)} records ${exact ? `(every record exactly once${killed ? ', across the kill' : ''})` : '(MISMATCH)'}.`,
  );
  out('');
  out(
    `Results: ${databasePath(dataDir)} (tables ${outputTableName('page-views')}, ${outputTableName('user-sessions')}).`,
  );
  out(`Inspect: npx floe status --job page-views --data-dir ${dataDir}`);
  const status = jobStatus(db, 'page-views', 'page-views');
  const finished = status.shards.every((s) => s.lag === 0);
  if (!finished) out('warning: the page-views job did not finish its input');
  return exact && finished;
}
