/**
 * The floe command, run for real as child processes of `node bin/floe.js`:
 * - errors are one `floe:` line on stderr with a non-zero exit (2 for usage errors), no stack trace;
 * - `floe simulate` prints exactly the README's worked example;
 * - `floe produce` + `floe run` killed with SIGKILL several times mid-run and restarted produce
 *   exactly what `simulate` produces in memory on the same records (same shards, same arrival
 *   times, processing time advanced at the end so every window fires).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import pageViews, { type PageView, type PageViewCount } from '../../examples/page-views.ts';
import { DEAD_LETTER_SINK, DEFAULT_LATE_SINK, type Output, shardIndexFor, shardName } from '../core/index.ts';
import { databasePath } from '../embedded/job.ts';
import { formatSequenceNumber, LocalLog } from '../embedded/local-log.ts';
import { outputTableName } from '../embedded/sinks.ts';
import { openSqlite, type SqliteDatabase } from '../embedded/sqlite.ts';
import { jobStatus } from '../embedded/status.ts';
import { simulate } from '../runtime/simulate.ts';
import { clickRecords } from './produce.ts';
import {
  type Child,
  type Exit,
  expectOneLineError,
  killRunningCli,
  ROOT,
  runCli,
  startCli,
} from './testing/run-cli.ts';

const TMP = mkdtempSync(join(tmpdir(), 'floe-cli-test-'));
afterAll(() => {
  killRunningCli();
  rmSync(TMP, { recursive: true, force: true });
});

const floe = (...args: string[]): Promise<Exit> => runCli(args);

/** A scratch directory (an ESM package, like this repo, so .ts modules load as ES modules). */
function scratch(name: string, files: Record<string, string> = {}): string {
  const dir = join(TMP, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), '{"type": "module"}\n');
  for (const [file, text] of Object.entries(files)) writeFileSync(join(dir, file), text);
  return dir;
}

const CORE = JSON.stringify(join(ROOT, 'lib/core/index.ts'));

describe.concurrent('floe errors: one "floe:" line on stderr, non-zero exit, no stack trace', () => {
  const modules = scratch('modules', {
    'no-default.ts': `import { pipeline } from ${CORE};\nexport const p = pipeline('x');\n`,
    'syntax-error.ts': `import { pipeline } from ${CORE};\nexport default pipeline('x'\n  .source(;\n`,
    'throws.ts': `throw new Error('boom while loading');\n`,
    'default-not-pipeline.ts': 'export default { name: "page-views" };\n',
  });
  const input = join(ROOT, 'examples/data/page-views.ndjson');

  it('a missing pipeline module, or a directory, is a usage error (exit 2)', async () => {
    expectOneLineError(
      await floe('run', join(modules, 'missing.ts'), '--data-dir', join(TMP, 'e1')),
      2,
      /^floe: pipeline module not found: .*missing\.ts \(resolved to .*missing\.ts\); check the path$/,
    );
    expectOneLineError(
      await floe('simulate', 'nope/missing.ts', '--input', input),
      2,
      /pipeline module not found/,
    );
    // Was "Directory import ... is not supported resolving ES modules", exit 1.
    expectOneLineError(
      await floe('run', modules, '--data-dir', join(TMP, 'e1')),
      2,
      /^floe: pipeline module .* is a directory; pass the path of the module's \.ts file$/,
    );
    expectOneLineError(
      await floe('simulate', modules, '--input', input),
      2,
      /^floe: pipeline module .* is a directory/,
    );
  });

  it('no pipeline module argument is a usage error', async () => {
    expectOneLineError(await floe('run'), 2, /run takes exactly one pipeline module; received 0/);
    expectOneLineError(await floe('simulate', '--input', input), 2, /exactly one pipeline module/);
  });

  it('module without a default pipeline export', async () => {
    expectOneLineError(
      await floe('simulate', join(modules, 'no-default.ts'), '--input', input),
      1,
      /must export a pipeline as its default export.*received undefined\); the module exports a pipeline as "p": add `export default p;`$/,
    );
    expectOneLineError(
      await floe('run', join(modules, 'default-not-pipeline.ts'), '--data-dir', join(TMP, 'e2')),
      1,
      /must export a pipeline as its default export.*received object/,
    );
  });

  it('module with a syntax error', async () => {
    expectOneLineError(
      await floe('simulate', join(modules, 'syntax-error.ts'), '--input', input),
      1,
      /^floe: could not load pipeline module .*syntax-error\.ts: /,
    );
  });

  // Bug: only the first line of esbuild's message is kept, "Transform failed with 1 error:",
  // which drops the file:line:column and the actual error (on the second line).
  it('module with a syntax error: the message says where and what', async () => {
    expectOneLineError(
      await floe('simulate', join(modules, 'syntax-error.ts'), '--input', input),
      1,
      /syntax-error\.ts:\d+:\d+: ERROR: /,
    );
  });

  it('module that throws while loading', async () => {
    expectOneLineError(
      await floe('simulate', join(modules, 'throws.ts'), '--input', input),
      1,
      /could not load pipeline module .*throws\.ts: boom while loading$/,
    );
  });

  // Bug: a pipeline module outside an ESM package ("type": "module") cannot be loaded at all,
  // even a valid one: tsx treats it as CommonJS and Node fails with "Cannot require() ES Module
  // ... in a cycle". (Here: a valid copy of examples/page-views.ts in a plain directory.)
  it('a valid pipeline module outside an ESM package loads', async () => {
    const dir = join(TMP, 'plain');
    mkdirSync(dir, { recursive: true });
    const source = readFileSync(join(ROOT, 'examples/page-views.ts'), 'utf8').replace(
      "'../lib/core/index.ts'",
      CORE,
    );
    writeFileSync(join(dir, 'page-views.ts'), source);
    const result = await floe('simulate', join(dir, 'page-views.ts'), '--input', input);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout.split('\n').filter(Boolean)).toHaveLength(6);
  });

  it('unknown stream for floe run', async () => {
    const dir = join(TMP, 'unknown-stream');
    const produced = await floe(
      'produce',
      '--stream',
      'clicks',
      '--generate',
      'clickstream',
      '--events',
      '10',
      '--data-dir',
      dir,
    );
    expect(produced.code, produced.stderr).toBe(0);
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--data-dir', dir, '--until-idle'),
      1,
      /unknown stream "page-views" in .*floe\.db; streams: clicks\. Create it with 'floe produce --stream page-views/,
    );
    expectOneLineError(
      await floe('status', '--job', 'page-views', '--data-dir', dir),
      1,
      /unknown stream "page-views"/,
    );
  });

  it('unknown command', async () => {
    expectOneLineError(await floe('frobnicate'), 2, /unknown command "frobnicate"/);
  });

  it('unknown flag', async () => {
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--bogus'),
      2,
      /^floe: unknown option --bogus for 'floe run'; see 'floe run --help'$/,
    );
    expectOneLineError(
      await floe('status', '--job', 'x', '--verbose'),
      2,
      /unknown option --verbose for 'floe status'/,
    );
    expectOneLineError(await floe('produce', '-z'), 2, /unknown option -z for 'floe produce'/);
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--untl-idle'),
      2,
      /^floe: unknown option --untl-idle for 'floe run' \(did you mean --until-idle\?\); see 'floe run --help'$/,
    );
  });

  it('a negative number after a flag: says how to pass it', async () => {
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--batch-size', '-5'),
      2,
      /^floe: --batch-size is followed by a value starting with "-", which reads as another option; write --batch-size=<value> for such a value$/,
    );
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--batch-size=-5'),
      2,
      /--batch-size must be a whole number from 1 to 10000; received "-5"/,
    );
  });

  it('bad numeric flags', async () => {
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--batch-size', '0'),
      2,
      /--batch-size must be a whole number from 1 to 10000; received "0"/,
    );
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--batch-size', 'many'),
      2,
      /--batch-size must be a whole number from 1 to 10000; received "many"/,
    );
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--lease-ttl=1.5', '--data-dir', join(TMP, 'e3')),
      2,
      /--lease-ttl must be a whole number from 1 to 2147483647; received "1.5"/,
    );
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '--input', input, '--shards', '0'),
      2,
      /--shards must be a whole number from 1 to 1024; received "0"/,
    );
    expectOneLineError(
      await floe('produce', '--stream', 's', '--generate', 'clickstream', '--late', '2'),
      2,
      /--late must be a number from 0 to 1, written as a plain decimal \(0, 0.05, .5 or 1\); received "2"/,
    );
    expectOneLineError(
      await floe('produce', '--stream', 's', '--generate', 'clickstream', '--events', '-'),
      2,
      /--events must be a whole number >= 1/,
    );
  });

  // Bug: parseArgs' message for an option value starting with '-' has three lines.
  it('an option value starting with a dash: one line', async () => {
    expectOneLineError(await floe('run', 'examples/page-views.ts', '--lease-ttl', '-5'), 2, /--lease-ttl/);
  });

  it('floe status for a missing data dir', async () => {
    const dir = join(TMP, 'does-not-exist');
    expectOneLineError(
      await floe('status', '--job', 'page-views', '--data-dir', dir),
      1,
      /no embedded data at .*does-not-exist\/floe\.db; run 'floe produce' and 'floe run' first/,
    );
    expectOneLineError(await floe('status'), 2, /status needs --job <id>/);
  });

  it('a missing input file is a usage error (exit 2)', async () => {
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '--input', join(TMP, 'none.ndjson')),
      2,
      /input file not found: .*none\.ndjson/,
    );
    expectOneLineError(
      await floe(
        'produce',
        '--stream',
        's',
        '--file',
        join(TMP, 'none.ndjson'),
        '--data-dir',
        join(TMP, 'e4'),
      ),
      2,
      /^floe: input file not found: .*none\.ndjson \(--file\); check the path, or pass - for stdin$/,
    );
    expectOneLineError(await floe('simulate', 'examples/page-views.ts'), 2, /simulate needs --input/);
  });

  it('produce refuses an "arrival" outside a Date range, naming the line (it failed with "Invalid time value")', async () => {
    const file = join(TMP, 'far-arrival.ndjson');
    for (const arrival of ['1e20', '"x"', '-9e15']) {
      writeFileSync(
        file,
        `{"partitionKey":"a","data":1,"arrival":0}\n{"partitionKey":"a","data":1,"arrival":${arrival}}\n`,
      );
      expectOneLineError(
        await floe('produce', '--stream', 's', '--file', file, '--data-dir', join(TMP, 'far-arrival')),
        1,
        /^floe: line 2: "arrival" must be whole epoch milliseconds within ±8640000000000000 \(a Date's range\); received /,
      );
    }
  });

  // Bug: when stdout is closed early (`floe simulate ... | head -1`), the EPIPE is an unhandled
  // 'error' event: Node prints a stack trace.
  it('a closed stdout is not a crash with a stack trace', async () => {
    const child = startCli(['simulate', 'examples/page-views.ts', '--input', input]);
    child.process.stdout?.destroy();
    const result = await child.exit;
    expect(result.stderr).not.toContain('    at ');
  });
});

describe('floe simulate', () => {
  it('prints exactly the worked example of the README', async () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const command = '$ npx floe simulate examples/page-views.ts --input examples/data/page-views.ndjson\n';
    const at = readme.indexOf(command);
    expect(at).toBeGreaterThan(0);
    const expected = readme.slice(at + command.length, readme.indexOf('```', at));
    expect(expected.split('\n').filter(Boolean)).toHaveLength(6);
    const result = await floe(
      'simulate',
      'examples/page-views.ts',
      '--input',
      'examples/data/page-views.ndjson',
    );
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(expected);
  });
});

// -------------------------------------------------------------------------------------------
// Exactly once across SIGKILLs: floe produce + floe run (killed and restarted) vs simulate.

const JOB = 'page-views';
const SHARDS = 4;
const EVENTS = 20_000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface LogRow {
  seq: number;
  shard_id: string;
  partition_key: string;
  data: Buffer;
  arrival: number;
}

interface OutRow {
  id: string;
  sink: string;
  value: unknown;
}

/** Output ids are `<job>/<shard>/<commit>/<index>`: per shard, commit order then emission order. */
function idOrder(id: string): [string, number, number] {
  const parts = id.split('/');
  expect(parts).toHaveLength(4);
  expect(parts[0]).toBe(JOB);
  return [parts[1]!, Number(parts[2]), Number(parts[3])];
}

function byId(a: OutRow, b: OutRow): number {
  const [sa, ca, ia] = idOrder(a.id);
  const [sb, cb, ib] = idOrder(b.id);
  return sa < sb ? -1 : sa > sb ? 1 : ca - cb || ia - ib;
}

const sortedJson = (values: readonly unknown[]): string[] => values.map((v) => JSON.stringify(v)).sort();

/** The last result of every (page, window), in emission order. */
function finalCounts(values: readonly unknown[]): Map<string, PageViewCount> {
  const out = new Map<string, PageViewCount>();
  for (const v of values) {
    const c = v as PageViewCount;
    out.set(`${c.page}@${c.windowStart}`, c);
  }
  return out;
}

function progress(db: SqliteDatabase): number {
  const status = jobStatus(db, JOB, JOB);
  const total = status.shards.reduce((n, s) => n + s.records, 0);
  return total === 0 ? 0 : status.shards.reduce((n, s) => n + s.records - s.lag, 0) / total;
}

describe('floe run: exactly once across SIGKILLs', () => {
  it('produce, run killed 3+ times mid-run and resumed, equals simulate on the same records', async () => {
    const dataDir = join(TMP, 'exactly-once');
    mkdirSync(dataDir, { recursive: true });

    // --- Input: generated clicks, partitioned by page, with arrival times 2-3 hours ago (inside
    // the stream's default 24 h retention, and long enough ago that idleness (1 minute) fires
    // every window once the job is caught up). 10 events/s of event time: ~33 one-minute windows.
    const generated = [
      ...clickRecords({
        events: EVENTS,
        rate: 10,
        users: 500,
        pages: 50,
        outOfOrder: 0.05,
        late: 0.02,
        seed: 7,
        partitionKey: 'page',
        poison: 0,
        // Minute-aligned, so the windows (and the counts) are the same on every run.
        start: Math.floor(Date.now() / 60_000) * 60_000 - 3 * 3600_000,
      }),
    ];
    const lines: string[] = [];
    generated.forEach((r, i) => {
      const line = {
        partitionKey: r.partitionKey,
        data: JSON.parse(r.data as string),
        arrival: r.arrivalTime,
      };
      lines.push(JSON.stringify(line));
      // Records that fail the pipeline: a JSON string (no timestamp) and a view without a page
      // (no key). Both go to the dead-letter sink.
      if (i % 2_500 === 1_000) lines.push(JSON.stringify({ ...line, data: 'not a page view' }));
      if (i % 2_500 === 2_000) lines.push(JSON.stringify({ ...line, data: { user: 'x', ts: line.data.ts } }));
    });
    const half = Math.floor(lines.length / 2);
    writeFileSync(join(dataDir, 'a.ndjson'), `${lines.slice(0, half).join('\n')}\n`);
    writeFileSync(join(dataDir, 'b.ndjson'), `${lines.slice(half).join('\n')}\n`);
    const produce = (file: string): Promise<Exit> =>
      floe('produce', '--stream', JOB, '--file', join(dataDir, file), '--data-dir', dataDir);
    const a = await produce('a.ndjson');
    expect(a.code, a.stderr).toBe(0);
    expect(a.stderr).toContain(`${half.toLocaleString('en-US')} records appended to stream "${JOB}"`);
    // Between the two files: payloads that are not JSON at all (produce --file cannot write
    // them), appended through the log API.
    const log = LocalLog.open(databasePath(dataDir));
    const middle = JSON.parse(lines[half - 1]!) as { arrival: number };
    await log.append(
      JOB,
      ['/', '/cart', '/search', '/deals', '/product/7'].map((page) => ({
        partitionKey: page,
        data: `{"page": "${page}", "ts": oops`,
        arrivalTime: middle.arrival,
      })),
    );
    await log.close();
    const b = await produce('b.ndjson');
    expect(b.code, b.stderr).toBe(0);

    // --- The log as the job will read it.
    const db = openSqlite(databasePath(dataDir));
    const records = db
      .prepare<[string], LogRow>(
        'SELECT seq, shard_id, partition_key, data, arrival FROM floe_log_record WHERE stream = ? ORDER BY seq',
      )
      .all(JOB);
    expect(records).toHaveLength(lines.length + 5);
    const ordinal = new Map<string, string>(); // global sequence number -> per-shard ordinal
    const perShard = new Map<string, number>();
    for (const r of records) {
      // Kinesis-style routing: the shard owning the MD5 hash of the partition key.
      expect(r.shard_id).toBe(shardName(shardIndexFor(r.partition_key, SHARDS)));
      const n = (perShard.get(r.shard_id) ?? 0) + 1;
      perShard.set(r.shard_id, n);
      ordinal.set(formatSequenceNumber(r.seq), String(n));
    }
    expect(perShard.size).toBe(SHARDS);
    // Arrival times as produced (they never decrease, so the log keeps them as they are).
    const arrivalOf = (line: string): number => (JSON.parse(line) as { arrival: number }).arrival;
    expect(records.map((r) => r.arrival)).toEqual([
      ...lines.slice(0, half).map(arrivalOf),
      ...Array<number>(5).fill(middle.arrival),
      ...lines.slice(half).map(arrivalOf),
    ]);

    // --- Run, SIGKILL mid-run several times, restart, let the last run finish.
    const run = (): Child =>
      startCli([
        'run',
        'examples/page-views.ts',
        '--data-dir',
        dataDir,
        '--until-idle',
        '--batch-size',
        '200',
        '--lease-ttl',
        '500',
        '--progress',
        'none',
      ]);
    const kills: number[] = [];
    /** After every kill: what was committed but not yet published (the outbox). */
    const pendingAtKill = new Map<string, { sink: string; value: string | null }>();
    let finished: Exit | undefined;
    for (const target of [0.15, 0.35, 0.55, 0.75, 2]) {
      const child = run();
      let exited: Exit | undefined;
      void child.exit.then((e) => {
        exited = e;
      });
      const threshold = Math.max(target, (kills.at(-1) ?? 0) + 0.1);
      let killed = false;
      for (;;) {
        if (exited !== undefined) break;
        const p = progress(db);
        if (p >= threshold && p > 0.1 && p < 0.9) {
          child.process.kill('SIGKILL');
          const e = await child.exit;
          expect(e.signal).toBe('SIGKILL');
          kills.push(p);
          killed = true;
          for (const row of db
            .prepare<[string], { output_id: string; sink: string; value: string | null }>(
              'SELECT output_id, sink, value FROM floe_outbox WHERE job = ?',
            )
            .all(JOB)) {
            pendingAtKill.set(row.output_id, { sink: row.sink, value: row.value });
          }
          break;
        }
        await sleep(3);
      }
      if (!killed) {
        finished = exited;
        break;
      }
    }
    expect(finished, 'the last run finishes').toBeDefined();
    expect(finished!.code, finished!.stderr).toBe(0);
    expect(finished!.signal).toBeNull();
    // The last run starts right after a kill: when it is up before the killed worker's leases
    // (--lease-ttl 500) expire, it says so once per shard before its summary, and nothing else.
    const stderrLines = finished!.stderr.split('\n');
    const summaryAt = stderrLines.findIndex((l) =>
      /^floe run: job "page-views" processed [\d,]+ records in /.test(l),
    );
    expect(summaryAt, finished!.stderr).toBeGreaterThanOrEqual(0);
    for (const line of stderrLines.slice(0, summaryAt)) {
      expect(line).toMatch(
        /^ {2}shardId-\d+: shard shardId-\d+ of job page-views \(generation 0\) is leased by local-\d+-shardId-\d+ until \S+; retry after it expires; retrying$/,
      );
    }
    expect(kills.length, `killed at ${kills.join(', ')}`).toBeGreaterThanOrEqual(3);
    for (const p of kills) {
      expect(p).toBeGreaterThan(0.1);
      expect(p).toBeLessThan(0.9);
    }

    // --- Job state at the end: every shard caught up, every window fired and cleaned up.
    const status = jobStatus(db, JOB, JOB);
    for (const s of status.shards) {
      expect(s.lag).toBe(0);
      expect(s.checkpoint?.timers).toEqual([]);
    }
    expect(
      db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM floe_state WHERE job = ?').get(JOB)!.n,
    ).toBe(0);
    expect(
      db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM floe_outbox WHERE job = ?').get(JOB)!.n,
    ).toBe(0);

    // --- The published outputs.
    const rows = db
      .prepare<[], { id: string; sink: string; value: string }>(
        `SELECT id, sink, value FROM "${outputTableName(JOB)}" ORDER BY rowid`,
      )
      .all()
      .map((r): OutRow => ({ id: r.id, sink: r.sink, value: JSON.parse(r.value) }));
    db.close();
    // Outputs committed but unpublished when a worker was killed were published, unchanged.
    const published = new Map(rows.map((r) => [r.id, r]));
    for (const [id, pending] of pendingAtKill) {
      expect(published.get(id)?.sink).toBe(pending.sink);
      expect(JSON.stringify(published.get(id)?.value)).toBe(pending.value);
    }
    // Ids are unique (one value each) and dense: per shard and commit, indexes 0..n-1.
    expect(new Set(rows.map((r) => r.id)).size).toBe(rows.length);
    const perCommit = new Map<string, number[]>();
    for (const r of rows) {
      const [shard, commit, index] = idOrder(r.id);
      const key = `${shard}/${commit}`;
      perCommit.set(key, [...(perCommit.get(key) ?? []), index]);
    }
    for (const indexes of perCommit.values()) {
      expect(indexes.sort((x, y) => x - y)).toEqual(indexes.map((_, i) => i));
    }
    const embedded = (sink: string): unknown[] =>
      rows
        .filter((r) => r.sink === sink)
        .sort(byId)
        .map((r) => r.value);

    // --- The same records through simulate: same shards, same payload bytes, same arrival
    // times, in log order per shard; then processing time moves on so idleness fires all.
    const script: string[] = [];
    for (const shard of [...perShard.keys()].sort()) {
      for (const r of records.filter((x) => x.shard_id === shard)) {
        script.push(
          JSON.stringify({
            partitionKey: r.partition_key,
            raw: r.data.toString('utf8'),
            shard: r.shard_id,
            arrival: r.arrival,
          }),
        );
      }
    }
    script.push(JSON.stringify({ processingTime: Date.now() + 3600_000 }));
    const expected: Output[] = [];
    await simulate(pageViews, script, { shards: SHARDS, onOutput: (o) => expected.push(o) });
    const simulated = (sink: string): unknown[] =>
      expected.filter((o) => o.sink === sink).map((o) => o.value);

    // Sinks: the counts, the window's late output, dead letters; nothing else.
    expect(new Set(rows.map((r) => r.sink))).toEqual(new Set(expected.map((o) => o.sink)));
    expect(new Set(rows.map((r) => r.sink))).toEqual(
      new Set(['page-view-counts', 'late-page-views', DEAD_LETTER_SINK]),
    );
    expect(embedded(DEFAULT_LATE_SINK)).toEqual([]);

    // Window results: the same multiset, and the same final result per page and window.
    const counts = embedded('page-view-counts');
    expect(counts.length).toBeGreaterThan(500);
    expect(counts.length).toBe(simulated('page-view-counts').length);
    expect(sortedJson(counts)).toEqual(sortedJson(simulated('page-view-counts')));
    const finals = finalCounts(counts);
    expect(finals).toEqual(finalCounts(simulated('page-view-counts')));
    expect(finals.size).toBeLessThan(counts.length); // some windows re-fired for late events

    // Late events: the same multiset.
    const late = embedded('late-page-views') as PageView[];
    expect(late.length).toBeGreaterThan(20);
    expect(sortedJson(late)).toEqual(sortedJson(simulated('late-page-views')));

    // Dead letters: the same, with the log's sequence numbers as per-shard ordinals (the
    // simulator numbers each shard's records 1, 2, ...).
    const dead = embedded(DEAD_LETTER_SINK).map((v) => {
      const letter = v as { sequenceNumber: string };
      expect(ordinal.has(letter.sequenceNumber)).toBe(true);
      return { ...letter, sequenceNumber: ordinal.get(letter.sequenceNumber) };
    });
    expect(dead).toHaveLength(8 + 8 + 5);
    expect(new Set(dead.map((d) => (d as unknown as { reason: string }).reason))).toEqual(
      new Set(['deserialize', 'timestamp', 'key']),
    );
    expect(sortedJson(dead)).toEqual(sortedJson(simulated(DEAD_LETTER_SINK)));

    // Every record exactly once: counted in a final window, late, or a dead letter.
    const counted = [...finals.values()].reduce((n, c) => n + c.views, 0);
    expect(counted + late.length + dead.length).toBe(records.length);
  }, 120_000);
});
