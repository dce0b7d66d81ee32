/**
 * The floe commands' contract with their user (docs/cli.md), run for real as child processes of
 * `node bin/floe.js`: usage errors exit 2, flags the backend would ignore are refused, commands
 * that read a data directory do not create one, replay takes the run options and reports the
 * state it wrote, and the demo's summary says what happened.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_SHARDS as LOG_MAX_SHARDS, MAX_READ_LIMIT } from '../embedded/local-log.ts';
import { openSqlite } from '../embedded/sqlite.ts';
import { MAX_BATCH_SIZE, MAX_LEASE_TTL, MAX_SHARDS } from './args.ts';
import { summarizeDemo } from './demo.ts';
import { type Exit, expectOneLineError, killRunningCli, ROOT, runCli } from './testing/run-cli.ts';

const TMP = mkdtempSync(join(tmpdir(), 'floe-commands-test-'));
afterAll(() => {
  killRunningCli();
  rmSync(TMP, { recursive: true, force: true });
});

const floe = (...args: string[]): Promise<Exit> => runCli(args);

/** A data directory with stream page-views (partitioned by page) holding `events` clicks. */
async function produced(name: string, events = 300): Promise<string> {
  const dir = join(TMP, name);
  const result = await floe(
    'produce',
    '--stream',
    'page-views',
    '--generate',
    'clickstream',
    '--partition-key',
    'page',
    '--events',
    String(events),
    '--data-dir',
    dir,
  );
  expect(result.code, result.stderr).toBe(0);
  return dir;
}

/** `produced`, then the page-views example run over it until idle. */
async function ranPageViews(name: string, events?: number): Promise<string> {
  const dir = await produced(name, events);
  const run = await floe(
    'run',
    'examples/page-views.ts',
    '--data-dir',
    dir,
    '--until-idle',
    '--progress',
    'none',
  );
  expect(run.code, run.stderr).toBe(0);
  return dir;
}

// Up to five of these run at once, each spawning several CLI processes one after another: on a
// loaded 2-core machine one test took over the default 60 s. The timeout only guards a hang.
describe.concurrent('usage errors exit 2', { timeout: 180_000 }, () => {
  it('floe without a command prints the usage on stderr and exits 2', async () => {
    const result = await floe();
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/^floe — stateful stream processing/);
    expect(result.stderr).toContain('Usage:');
    const help = await floe('help');
    expect(help.code).toBe(0);
    expect(help.stdout).toBe(result.stderr);
  });

  it('every savepoint subcommand takes --help and -h: the savepoint help on stdout, exit 0', async () => {
    for (const sub of ['create', 'list', 'inspect', 'delete']) {
      for (const flag of ['--help', '-h']) {
        const result = await floe('savepoint', sub, flag);
        expect(result.code, `savepoint ${sub} ${flag}: ${result.stderr}`).toBe(0);
        expect(result.stderr).toBe('');
        expect(result.stdout).toMatch(/^floe savepoint <create\|list\|inspect\|delete> \[options\]\n/);
      }
    }
  });

  it('an invalid --job or --as-job is a usage error naming the flag, in every command that takes it', async () => {
    const dir = join(TMP, 'bad-job-id');
    const noRegion = { AWS_REGION: '', AWS_CONFIG_FILE: join(TMP, 'no-config') };
    const cases: Array<[string[], string]> = [
      [['status', '--job', 'bad id'], '--job'],
      [['savepoint', 'create', '--job', 'bad id'], '--job'],
      [['savepoint', 'list', '--job', 'bad id'], '--job'],
      [['savepoint', 'inspect', 'sp-1', '--job', 'bad id'], '--job'],
      [['savepoint', 'delete', 'sp-1', '--job', 'bad id'], '--job'],
      [['replay', '--from-savepoint', 'sp-1', '--job', 'bad id'], '--job'],
      [
        ['replay', '--from-timestamp', '0', '--pipeline', 'examples/page-views.ts', '--job', 'bad id'],
        '--job',
      ],
      [['replay', '--from-savepoint', 'sp-1', '--as-job', 'bad id'], '--as-job'],
      [['run', 'examples/page-views.ts', '--job', 'bad id'], '--job'],
    ];
    for (const [args, flag] of cases) {
      expectOneLineError(
        await floe(...args, '--data-dir', dir),
        2,
        new RegExp(
          `^floe: ${flag}: a job id is 1-100 letters, digits, '\\.', '_' or '-' starting with a letter or digit; received "bad id"$`,
        ),
      );
    }
    // Before any AWS call: no region is needed to be told.
    expectOneLineError(
      await runCli(['run', 'examples/page-views.ts', '--backend', 'aws', '--job', 'a#b'], noRegion),
      2,
      /^floe: --job: a job id is 1-100 letters.*; received "a#b"$/,
    );
    expectOneLineError(
      await runCli(['status', '--job', 'a#b', '--backend', 'aws'], noRegion),
      2,
      /^floe: --job: a job id is 1-100 letters.*; received "a#b"$/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('floe savepoint refuses an unknown --backend as a usage error', async () => {
    const dir = join(TMP, 'bad-backend');
    for (const args of [['create', '--job', 'j'], ['list'], ['inspect', 'sp-1'], ['delete', 'sp-1']]) {
      expectOneLineError(
        await floe('savepoint', ...args, '--backend', 'foo', '--data-dir', dir),
        2,
        /^floe: --backend must be one of embedded, aws; received "foo"$/,
      );
    }
    expect(existsSync(dir)).toBe(false);
  });

  it('the embedded --savepoint-dir must be a local directory: not s3://, empty or a file', async () => {
    const dir = join(TMP, 'bad-savepoint-dir');
    const file = join(TMP, 'savepoint-dir-file');
    writeFileSync(file, 'x');
    for (const [args, pattern] of [
      [
        ['create', '--job', 'j', '--savepoint-dir', 's3://bucket/sp/'],
        /^floe: --savepoint-dir s3:\/\/bucket\/sp\/: savepoints in S3 need --backend aws;/,
      ],
      [
        ['list', '--savepoint-dir', 's3://'],
        /^floe: --savepoint-dir s3:\/\/: savepoints in S3 need --backend aws;/,
      ],
      [
        ['create', '--job', 'j', '--savepoint-dir', ''],
        /^floe: --savepoint-dir needs a directory path; received ""$/,
      ],
      [
        ['create', '--job', 'j', '--savepoint-dir', file],
        /^floe: --savepoint-dir .*savepoint-dir-file is not a directory; pass a directory path$/,
      ],
    ] as const) {
      expectOneLineError(await floe('savepoint', ...args, '--data-dir', dir), 2, pattern);
    }
    expect(existsSync(dir)).toBe(false);
    expect(existsSync('s3:')).toBe(false);
  });

  it('a savepoint id that cannot be one is a usage error, before any data directory is read', async () => {
    const dir = join(TMP, 'bad-savepoint-id');
    const rule = "a savepoint id is 1-151 letters, digits, '.', '_' or '-' starting with a letter or digit";
    for (const [args, what, received] of [
      [['savepoint', 'inspect', '../x'], 'savepoint inspect', '"../x"'],
      [['savepoint', 'delete', 'a b'], 'savepoint delete', '"a b"'],
      [['savepoint', 'create', '--job', 'j', '--id', 'a/b'], '--id', '"a/b"'],
      [['replay', '--from-savepoint', ''], '--from-savepoint', '""'],
    ] as const) {
      expectOneLineError(
        await floe(...args, '--data-dir', dir),
        2,
        new RegExp(
          `^floe: ${what}: ${rule.replaceAll('.', '\\.')}; received ${received.replaceAll('.', '\\.')}$`,
        ),
      );
    }
    expect(existsSync(dir)).toBe(false);
  });

  it('floe savepoint create --progress takes auto or none only', async () => {
    const dir = join(TMP, 'bad-progress');
    expectOneLineError(
      await floe('savepoint', 'create', '--job', 'j', '--progress', 'lines', '--data-dir', dir),
      2,
      /^floe: --progress must be one of auto, none; received "lines"$/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it("run and replay --batch-size above a read's limit name the flag before the job is touched", async () => {
    expect(MAX_BATCH_SIZE).toBe(MAX_READ_LIMIT);
    const dir = await produced('batch-too-large', 10);
    expectOneLineError(
      await floe(
        'run',
        'examples/page-views.ts',
        '--job',
        'pv-big',
        '--batch-size',
        '10001',
        '--data-dir',
        dir,
      ),
      2,
      /^floe: --batch-size must be a whole number from 1 to 10000; received "10001"$/,
    );
    expectOneLineError(
      await floe(
        'replay',
        '--from-timestamp',
        '0',
        '--pipeline',
        'examples/page-views.ts',
        '--as-job',
        'pv-big',
        '--batch-size',
        '10001',
        '--data-dir',
        dir,
      ),
      2,
      /--batch-size must be a whole number from 1 to 10000; received "10001"/,
    );
    // Neither wrote a job record (nor took a lease) for the job.
    const status = await floe('status', '--job', 'pv-big', '--stream', 'page-views', '--data-dir', dir);
    expect(status.stdout).toMatch(/^job pv-big on stream page-views\n/);
  });

  it('--lease-ttl is at most 2147483647 ms (a longer savepoint hold is renewed every 1 ms, with a warning)', async () => {
    const dir = await produced('lease-too-long', 10);
    const tooLong = String(MAX_LEASE_TTL + 1);
    const pattern = new RegExp(
      `--lease-ttl must be a whole number from 1 to ${MAX_LEASE_TTL}; received "${tooLong}"$`,
    );
    for (const args of [
      ['run', 'examples/page-views.ts', '--job', 'pv-lease', '--until-idle'],
      ['replay', '--from-timestamp', '0', '--pipeline', 'examples/page-views.ts', '--as-job', 'pv-lease'],
      ['savepoint', 'create', '--job', 'page-views'],
    ]) {
      expectOneLineError(await floe(...args, '--lease-ttl', tooLong, '--data-dir', dir), 2, pattern);
    }
  });

  it('an invalid --stream is a usage error in every command that takes it, and creates nothing', async () => {
    const dir = join(TMP, 'bad-stream-name');
    const rule =
      /^floe: --stream: a stream name is 1 to 128 characters of letters, digits, "_", "\." and "-" \(as in Kinesis\); received "(a\/b|)"$/;
    const cases: string[][] = [
      ['produce', '--stream', 'a/b', '--generate', 'clickstream', '--events', '5'],
      ['run', 'examples/page-views.ts', '--stream', ''],
      ['replay', '--from-timestamp', '0', '--pipeline', 'examples/page-views.ts', '--stream', 'a/b'],
      ['status', '--job', 'j', '--stream', ''],
      ['savepoint', 'create', '--job', 'j', '--stream', 'a/b'],
    ];
    for (const args of cases) expectOneLineError(await floe(...args, '--data-dir', dir), 2, rule);
    expect(existsSync(dir)).toBe(false);
    // Before any AWS call: no region is needed to be told.
    const noRegion = { AWS_REGION: '', AWS_CONFIG_FILE: join(TMP, 'no-config') };
    expectOneLineError(
      await runCli(['run', 'examples/page-views.ts', '--backend', 'aws', '--stream', 'a/b'], noRegion),
      2,
      rule,
    );
  });

  it('produce --shards above the local log limit names the flag and the limit', async () => {
    expect(MAX_SHARDS).toBe(LOG_MAX_SHARDS);
    const dir = join(TMP, 'too-many-shards');
    expectOneLineError(
      await floe(
        'produce',
        '--stream',
        's',
        '--generate',
        'clickstream',
        '--shards',
        '5000',
        '--data-dir',
        dir,
      ),
      2,
      /^floe: --shards must be a whole number from 1 to 1024; received "5000"$/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('floe run refuses the AWS options on the embedded backend, and --data-dir on AWS', async () => {
    const dir = join(TMP, 'embedded-flags');
    for (const [flags, pattern] of [
      [
        ['--sink', 'page-view-counts=s3:bucket/p/'],
        /^floe: --sink applies to --backend aws only; the embedded backend writes every sink to the table floe_out_<job>/,
      ],
      [
        ['--create-resources'],
        /^floe: --create-resources applies to --backend aws only; on the embedded backend 'floe produce' creates the stream$/,
      ],
      [['--shards', '3'], /^floe: --shards applies to --backend aws only; .*'floe produce --shards N'/],
      [['--state-table', 't'], /^floe: --state-table applies to --backend aws only/],
      [
        ['--generation', '1'],
        /^floe: --generation applies to --backend aws only; the embedded backend runs the generation its job record names/,
      ],
    ] as const) {
      expectOneLineError(
        await floe('run', 'examples/page-views.ts', '--data-dir', dir, ...flags),
        2,
        pattern,
      );
    }
    expectOneLineError(
      await floe('savepoint', 'create', '--job', 'j', '--generation', '1', '--data-dir', dir),
      2,
      /^floe: --generation needs --backend aws: an embedded job's generation is in its job record/,
    );
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--backend', 'aws', '--data-dir', dir),
      2,
      /^floe: --data-dir is for the embedded backend; on --backend aws name the resources/,
    );
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--backend', 'aws', '--shards', '3'),
      2,
      /^floe: --shards is the shard count of a stream that --create-resources creates; pass --create-resources too/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  // Checked before any AWS call: no endpoint, region or credentials are needed.
  it('floe run --backend aws refuses a --sink for a sink the pipeline does not have', async () => {
    expectOneLineError(
      await floe(
        'run',
        'examples/page-views.ts',
        '--backend',
        'aws',
        '--sink',
        'nosuchsink=s3:bucket/prefix/',
      ),
      2,
      /^floe: --sink "nosuchsink=s3:bucket\/prefix\/" binds "nosuchsink", which pipeline page-views has no sink for; its sinks are page-view-counts, floe\.dead-letter, late-page-views/,
    );
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--backend', 'aws', '--sink', 'page-view-counts=ftp:x'),
      2,
      /^floe: --sink: invalid sink binding "page-view-counts=ftp:x": unknown destination type "ftp"/,
    );
  });

  it('an empty AWS_REGION is no region: the same line as an unset one', async () => {
    const env = {
      AWS_REGION: '',
      AWS_CONFIG_FILE: join(TMP, 'no-config'),
      AWS_ENDPOINT_URL: 'http://127.0.0.1:9',
    };
    expectOneLineError(
      await runCli(['status', '--job', 'x', '--backend', 'aws'], env),
      1,
      /^floe: no AWS region configured: set AWS_REGION \(e\.g\. us-east-1\)$/,
    );
  });
});

describe.concurrent('commands that read a data directory do not create one', () => {
  it('floe run, status, savepoint and replay refuse a missing data directory and leave it missing', async () => {
    const dir = join(TMP, 'typo');
    expectOneLineError(
      await floe('run', 'examples/page-views.ts', '--data-dir', dir, '--until-idle'),
      1,
      /^floe: no embedded data at .*typo\/floe\.db; check --data-dir, or create a stream there first with 'floe produce --stream <name> --data-dir .*typo'$/,
    );
    expectOneLineError(
      await floe('status', '--job', 'page-views', '--data-dir', dir),
      1,
      /no embedded data at .*check --data-dir/,
    );
    expectOneLineError(
      await floe('savepoint', 'create', '--job', 'page-views', '--data-dir', dir),
      1,
      /no embedded data at/,
    );
    expectOneLineError(
      await floe(
        'replay',
        '--from-timestamp',
        '0',
        '--pipeline',
        'examples/page-views.ts',
        '--data-dir',
        dir,
      ),
      1,
      /no embedded data at/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('a --data-dir that is a file (floe.db itself) says so and names the directory to pass', async () => {
    const dir = join(TMP, 'db-file');
    mkdirSync(dir, { recursive: true });
    const db = join(dir, 'floe.db');
    writeFileSync(db, '');
    const expected =
      /^floe: --data-dir .*db-file\/floe\.db is a file, not a directory; pass the directory that holds floe\.db \(.*db-file\)$/;
    expectOneLineError(await floe('status', '--job', 'page-views', '--data-dir', db), 1, expected);
    expectOneLineError(await floe('run', 'examples/page-views.ts', '--data-dir', db), 1, expected);
    expectOneLineError(
      await floe(
        'produce',
        '--stream',
        's',
        '--file',
        join(ROOT, 'examples/data/page-views.ndjson'),
        '--partition-key',
        'page',
        '--data-dir',
        db,
      ),
      1,
      expected,
    );
    expectOneLineError(await floe('savepoint', 'list', '--data-dir', db), 1, expected);
  });

  it('floe produce --file checks every line before it creates the stream or appends anything', async () => {
    const dir = join(TMP, 'bad-file');
    const file = join(TMP, 'bad.ndjson');
    writeFileSync(file, '{"partitionKey": "a", "data": 1}\n{"partitionKey": "b", "data": 2}\nnot json\n');
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', file, '--data-dir', dir),
      1,
      /^floe: line 3: not valid JSON: not json$/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('floe produce --file refuses an arrival that is not epoch ms and a field a record does not have', async () => {
    const dir = join(TMP, 'bad-arrival');
    const iso = join(TMP, 'iso-arrival.ndjson');
    writeFileSync(iso, '{"partitionKey": "a", "data": 1, "arrival": "2026-01-01T00:00:00Z"}\n');
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', iso, '--data-dir', dir),
      1,
      /^floe: line 1: "arrival" must be whole epoch milliseconds within ±8640000000000000 \(a Date's range\); received "2026-01-01T00:00:00Z"$/,
    );
    const fractional = join(TMP, 'fractional-arrival.ndjson');
    writeFileSync(fractional, `{"partitionKey": "a", "data": 1, "arrival": ${Date.now()}.5}\n`);
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', fractional, '--data-dir', dir),
      1,
      /^floe: line 1: "arrival" must be whole epoch milliseconds within .*; received \d+\.5$/,
    );
    const misspelt = join(TMP, 'misspelt-arrival.ndjson');
    writeFileSync(
      misspelt,
      '{"partitionKey": "a", "data": 1, "arrival": 5}\n{"partitionKey": "a", "data": 2, "arival": 5}\n',
    );
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', misspelt, '--data-dir', dir),
      1,
      /^floe: line 2: unknown field "arival" \(misspelt\?\); a record has only "partitionKey", "data" and "arrival"/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it("floe produce refuses records already past the stream's retention instead of appending them to be trimmed", async () => {
    const dir = join(TMP, 'past-retention');
    // 90,000 events at 1 a second: 25 h of arrival times ending now, over the default 24 h.
    expectOneLineError(
      await floe(
        'produce',
        '--stream',
        's',
        '--generate',
        'clickstream',
        '--events',
        '90000',
        '--rate',
        '1',
        '--data-dir',
        dir,
      ),
      1,
      /^floe: the records' arrival times span 25\.0 h up to .*, beyond the 24\.0 h retention of stream "s": the oldest would be trimmed as soon as they are appended; pass --retention-hours 26 or infinite/,
    );
    expect(existsSync(dir)).toBe(false);
    const old = join(TMP, 'two-days-old.ndjson');
    writeFileSync(old, `{"partitionKey": "a", "data": 1, "arrival": ${Date.now() - 48 * 3_600_000}}\n`);
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', old, '--data-dir', dir),
      1,
      /beyond the 24\.0 h retention of stream "s"/,
    );
    expect(existsSync(dir)).toBe(false);
    const kept = await floe(
      'produce',
      '--stream',
      's',
      '--file',
      old,
      '--retention-hours',
      'infinite',
      '--data-dir',
      dir,
    );
    expect(kept.code, kept.stderr).toBe(0);
    expect(kept.stderr).toContain('1 records appended to stream "s"');
  });

  it('floe produce --file checks partition keys and record sizes by line before it appends anything', async () => {
    const dir = join(TMP, 'over-limits');
    // 7,000 lines, more than one append chunk of 5,000; line 6,501 has a 300-character key.
    const lines = Array.from({ length: 7_000 }, (_, i) =>
      JSON.stringify({ partitionKey: i === 6_500 ? 'x'.repeat(300) : `k${i}`, data: { i } }),
    );
    const long = join(TMP, 'long-key.ndjson');
    writeFileSync(long, `${lines.join('\n')}\n`);
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', long, '--data-dir', dir),
      1,
      /^floe: line 6501: the partition key must be 1 to 256 characters; received 300 characters/,
    );
    expect(existsSync(dir)).toBe(false);
    const empty = join(TMP, 'empty-key.ndjson');
    writeFileSync(empty, '{"partitionKey": "", "data": 1}\n');
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', empty, '--data-dir', dir),
      1,
      /^floe: line 1: the partition key must be 1 to 256 characters; received an empty one$/,
    );
    const large = join(TMP, 'large-record.ndjson');
    writeFileSync(large, `{"page": "a", "pad": "${'x'.repeat(1_100_000)}"}\n`);
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', large, '--partition-key', 'page', '--data-dir', dir),
      1,
      /^floe: line 1: the record's data is 1100024 bytes; a record holds at most 1048576 \(1 MiB\)$/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('floe produce --file <a directory> is a usage error (exit 2) that says so; a BOM at the start is skipped', async () => {
    const dir = join(TMP, 'produce-dir');
    mkdirSync(join(TMP, 'a-directory'), { recursive: true });
    expectOneLineError(
      await floe('produce', '--stream', 's', '--file', join(TMP, 'a-directory'), '--data-dir', dir),
      2,
      /^floe: --file .*a-directory is a directory; pass an NDJSON file \(or - for stdin\)$/,
    );
    expect(existsSync(dir)).toBe(false);
    const bom = join(TMP, 'bom.ndjson');
    writeFileSync(bom, '\uFEFF{"partitionKey": "a", "data": 1}\n');
    const result = await floe('produce', '--stream', 's', '--file', bom, '--data-dir', dir);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain('1 records appended to stream "s"');
  });
});

describe('floe status of a job that has not run', () => {
  it('says no such job has run, and which have, rather than blame the stream', async () => {
    const dir = await ranPageViews('status-typo', 10);
    expectOneLineError(
      await floe('status', '--job', 'page-view', '--data-dir', dir),
      1,
      /^floe: no job "page-view" has run in .*floe\.db \(jobs: page-views\), and without a job record its stream is taken to be "page-view": unknown stream "page-view" \(streams: page-views\)\. Check --job, or pass --stream <name>/,
    );
  });
});

describe('floe status of a job that has run', () => {
  it('refuses a --stream the job does not read, as floe run does', async () => {
    const dir = await ranPageViews('status-stream', 20);
    const other = await floe(
      'produce',
      '--stream',
      'other',
      '--generate',
      'clickstream',
      '--events',
      '5',
      '--data-dir',
      dir,
    );
    expect(other.code, other.stderr).toBe(0);
    expectOneLineError(
      await floe('status', '--job', 'page-views', '--stream', 'other', '--data-dir', dir),
      1,
      /^floe: job page-views reads stream "page-views", not "other"; its checkpoints are positions in "page-views"\. Leave out --stream, or pass --stream page-views$/,
    );
  });

  it("counts a job's lag from its start: a job replayed from a timestamp lags by the records from then on", async () => {
    const dir = await produced('status-from-timestamp', 400);
    const db = openSqlite(join(dir, 'floe.db'));
    const arrivals = db
      .prepare<[], { arrival: number }>(
        "SELECT arrival FROM floe_log_record WHERE stream = 'page-views' ORDER BY arrival",
      )
      .all()
      .map((r) => r.arrival);
    db.close();
    const from = arrivals[300]!;
    const after = arrivals.filter((a) => a >= from).length;
    expect(after).toBeLessThan(400);
    const replay = await floe(
      'replay',
      '--from-timestamp',
      String(from),
      '--pipeline',
      'examples/page-views.ts',
      '--restore-only',
      '--data-dir',
      dir,
    );
    expect(replay.code, replay.stderr).toBe(0);
    const status = await floe('status', '--job', 'page-views', '--data-dir', dir, '--json');
    expect(status.code, status.stderr).toBe(0);
    const shards = JSON.parse(status.stdout).shards as Array<{ records: number; lag: number }>;
    expect(shards.reduce((n, s) => n + s.lag, 0)).toBe(after);
    expect(shards.reduce((n, s) => n + s.records, 0)).toBe(after);
  });
});

describe('floe status after a replay', () => {
  it("counts the outputs of the job's current generation, not every generation's", async () => {
    const dir = await produced('status-generations');
    const D = ['--data-dir', dir];
    const outputs = async (): Promise<Record<string, number>> => {
      const status = await floe('status', '--job', 'page-views', ...D, '--json');
      expect(status.code, status.stderr).toBe(0);
      return JSON.parse(status.stdout).outputs;
    };
    const run = await floe('run', 'examples/page-views.ts', ...D, '--until-idle', '--progress', 'none');
    expect(run.code, run.stderr).toBe(0);
    const first = await outputs();
    expect(Object.values(first).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    // The same records again into generation 1: the same outputs, under new ids in the same table.
    const replay = await floe(
      'replay',
      '--from-timestamp',
      '0',
      '--pipeline',
      'examples/page-views.ts',
      ...D,
      '--until-idle',
      '--progress',
      'none',
    );
    expect(replay.code, replay.stderr).toBe(0);
    expect(await outputs()).toEqual(first);
  });
});

describe('floe status --json', () => {
  it('prints the documented shape, as on AWS: the job record summary and per shard a summary of its checkpoint', async () => {
    const dir = await ranPageViews('status-json');
    const before = Date.now();
    const status = await floe('status', '--job', 'page-views', '--data-dir', dir, '--json');
    expect(status.code, status.stderr).toBe(0);
    const json = JSON.parse(status.stdout);
    expect(Object.keys(json)).toEqual([
      'backend',
      'job',
      'stream',
      'generation',
      'at',
      'record',
      'known',
      'shards',
      'outputs',
      'deadLetters',
    ]);
    expect(json).toMatchObject({
      backend: 'embedded',
      job: 'page-views',
      stream: 'page-views',
      generation: 0,
    });
    expect(json.at).toBeGreaterThanOrEqual(before);
    expect(json.known).toBe(true);
    // The record without its bookkeeping (version, nextGeneration, operators), as on AWS.
    expect(json.record).toMatchObject({ state: 'running', generation: 0, stream: 'page-views' });
    expect(json.record).not.toHaveProperty('version');
    expect(json.record).not.toHaveProperty('operators');
    expect(json.shards.length).toBeGreaterThan(0);
    for (const shard of json.shards) {
      // Not the raw checkpoint (its timers, timer log and idleness bookkeeping).
      expect(Object.keys(shard)).toEqual([
        'shardId',
        'state',
        'checkpointed',
        'position',
        'commitNumber',
        'watermark',
        'finished',
        'pendingTimers',
        'records',
        'lag',
      ]);
      expect(shard).toMatchObject({ state: 'open', checkpointed: true, finished: false, lag: 0 });
      expect(shard.commitNumber).toBeGreaterThan(0);
      expect(typeof shard.position).toBe('string');
      expect(typeof shard.watermark).toBe('number');
      expect(shard.pendingTimers).toBeGreaterThanOrEqual(0);
    }
    expect(json.shards.reduce((n: number, s: { records: number }) => n + s.records, 0)).toBe(300);
  });
});

describe('floe replay', () => {
  it('takes the run options of docs/cli.md, checks them before restoring, and reports the entries it wrote', async () => {
    const dir = await produced('replay');
    const D = ['--data-dir', dir];
    const run = await floe('run', 'examples/page-views.ts', ...D, '--until-idle', '--progress', 'none');
    expect(run.code, run.stderr).toBe(0);
    const created = await floe('savepoint', 'create', '--job', 'page-views', ...D, '--progress', 'none');
    expect(created.code, created.stderr).toBe(0);
    const id = created.stdout.trim();
    const entries = Number(/: ([\d,]+) state entries in/.exec(created.stderr)![1]!.replace(/,/g, ''));
    expect(entries).toBeGreaterThan(0);

    // Bad run options and an embedded --sink are refused before anything is restored.
    for (const [flags, pattern] of [
      [
        ['--commit-interval', 'soon'],
        /^floe: --commit-interval must be a whole number >= 0; received "soon"$/,
      ],
      [['--max-cached-keys', '0'], /^floe: --max-cached-keys must be a whole number >= 1/],
      [['--progress', 'loud'], /^floe: --progress must be one of auto, lines, none/],
      [['--sink', 'page-view-counts=s3:bucket/p/'], /^floe: --sink applies to --backend aws only/],
    ] as const) {
      expectOneLineError(
        await floe('replay', '--from-savepoint', id, '--as-job', 'refused', ...D, ...flags),
        2,
        pattern,
      );
    }
    const status = await floe('status', '--job', 'refused', ...D, '--stream', 'page-views', '--json');
    expect(JSON.parse(status.stdout).shards.every((s: { checkpointed: boolean }) => !s.checkpointed)).toBe(
      true,
    );

    // The run options reach the run.
    const replayed = await floe(
      'replay',
      '--from-savepoint',
      id,
      '--as-job',
      'pv-copy',
      ...D,
      '--until-idle',
      '--commit-interval',
      '200',
      '--max-cached-keys',
      '10',
      '--progress',
      'none',
    );
    expect(replayed.code, replayed.stderr).toBe(0);
    expect(replayed.stderr).toContain(
      `into job pv-copy, generation 0: ${entries} state entries, 4 shard checkpoint(s)`,
    );
    expect(replayed.stderr).toMatch(/floe run: job "pv-copy" processed 0 records/);

    // Every operator's state dropped: the count written is 0, and the dropped ones are named.
    const dropped = await floe(
      'replay',
      '--from-savepoint',
      id,
      '--as-job',
      'pv-sessions',
      '--pipeline',
      'examples/user-sessions.ts',
      '--allow-non-restored-state',
      '--restore-only',
      '--progress',
      'none',
      ...D,
    );
    expect(dropped.code, dropped.stderr).toBe(0);
    expect(dropped.stderr).toContain(
      `into job pv-sessions, generation 0: 0 of ${entries} saved state entries written (${entries} dropped: their operators are not in the pipeline), 4 shard checkpoint(s)`,
    );

    // A migration that fails on the last entry: one line naming it, and nothing restored, so
    // the replay with the fixed migration starts from nothing (no claimed job, no entries).
    const failing = join(TMP, 'migration-fails-last.ts');
    writeFileSync(
      failing,
      `let n = 0;\nexport default (entry: unknown) => {\n  if (++n === ${entries}) throw new Error('boom');\n  return entry;\n};\n`,
    );
    const migrate = (module: string) =>
      floe(
        'replay',
        '--from-savepoint',
        id,
        '--as-job',
        'pv-mig',
        '--migration',
        module,
        '--restore-only',
        '--progress',
        'none',
        ...D,
      );
    expectOneLineError(
      await migrate(failing),
      1,
      /^floe: the migration threw on the saved state entry of operator "\S+" for key \S+ \(state file .*\): Error: boom\. Nothing was restored: fix the migration and rerun the replay$/,
    );
    const fixed = join(TMP, 'migration-fixed.ts');
    writeFileSync(fixed, 'export default (entry: unknown) => entry;\n');
    const migrated = await migrate(fixed);
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.stderr).toContain(
      `into job pv-mig, generation 0: ${entries} state entries, 4 shard checkpoint(s)`,
    );

    // A migration module that cannot load, or exports no migration: one line naming the module
    // (was "unexpected error: mig boom", and esbuild's two-line message for a syntax error).
    const throws = join(TMP, 'migration-throws.ts');
    writeFileSync(throws, "throw new Error('mig boom');\n");
    expectOneLineError(
      await migrate(throws),
      1,
      /^floe: could not load --migration module .*migration-throws\.ts: mig boom$/,
    );
    const syntax = join(TMP, 'migration-syntax.ts');
    writeFileSync(syntax, 'export default {\n');
    expectOneLineError(
      await migrate(syntax),
      1,
      /^floe: could not load --migration module .*migration-syntax\.ts: .*migration-syntax\.ts:\d+:\d+: ERROR: /,
    );
    const misspelt = join(TMP, 'migration-misspelt.ts');
    writeFileSync(misspelt, 'export default { stat: (entry: unknown) => entry };\n');
    expectOneLineError(
      await migrate(misspelt),
      1,
      /^floe: --migration module .*migration-misspelt\.ts: a migration is a function .*; received an object with "stat" and no state or timer function$/,
    );
    // Without a default export (was: "a migration is a function ...; received undefined").
    const named = join(TMP, 'migration-named.ts');
    writeFileSync(named, 'export const version = 2;\nexport const toV2 = (entry: unknown) => entry;\n');
    expectOneLineError(
      await migrate(named),
      1,
      /^floe: --migration module .*migration-named\.ts has no default export \(its exports: "toV2", "version"\): export the migration as its default \(export default \(entry\) => entry, or export default \{ state\(entry\) \{\.\.\.\}, timer\(timer\) \{\.\.\.\} \}\); to use "toV2", add `export default toV2;`$/,
    );
    const empty = join(TMP, 'migration-empty.ts');
    writeFileSync(empty, 'export {};\n');
    expectOneLineError(
      await migrate(empty),
      1,
      /^floe: --migration module .*migration-empty\.ts has no default export: export the migration as its default \(export default \(entry\) => entry, or .*\}\)$/,
    );
  });
});

describe.concurrent('floe demo says what happened', () => {
  it('--no-kill: no restart and no kill in the summary', async () => {
    const dir = join(TMP, 'demo-no-kill');
    const result = await floe('demo', '--events', '300', '--no-kill', '--data-dir', dir);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).not.toMatch(/killed|the kill|restart/);
    expect(result.stdout).toContain('including process start-up).');
    expect(result.stdout).toMatch(/= 301 of 301 records \(every record exactly once\)\./);
    // Results that do not add up (here: the dead letter lost) fail the demo.
    const db = openSqlite(join(dir, 'floe.db'));
    try {
      expect(summarizeDemo(db, () => {}, 301, 1, dir, false)).toBe(true);
      const lost = db.prepare(`DELETE FROM "floe_out_page-views" WHERE sink = 'floe.dead-letter'`).run();
      expect(lost.changes).toBeGreaterThan(0);
      const lines: string[] = [];
      expect(summarizeDemo(db, (l) => lines.push(l), 301, 1, dir, false)).toBe(false);
      expect(lines.join('\n')).toMatch(/of 301 records \(MISMATCH\)/);
    } finally {
      db.close();
    }
  });

  it('a kill is claimed only when it happened mid-run, and then the summary mentions it', async () => {
    const dir = join(TMP, 'demo-kill');
    const result = await floe('demo', '--events', '100', '--data-dir', dir);
    expect(result.code, result.stderr).toBe(0);
    const killed = /killed the page-views worker \(SIGKILL\) at ([\d,]+) records/.exec(result.stdout);
    if (killed === null) {
      expect(result.stdout).toContain(
        'the page-views worker finished before it could be killed: nothing was killed',
      );
      expect(result.stdout).not.toMatch(/across the kill|and the restart/);
    } else {
      expect(Number(killed[1]!.replace(/,/g, ''))).toBeLessThan(101);
      expect(result.stdout).toContain('across the kill');
      expect(result.stdout).toContain('and the restart');
    }
    expect(readdirSync(dir)).toContain('floe.db');
  });
});

describe.concurrent('floe demo deletes only its own data directory', () => {
  it('refuses a directory holding files it did not write, and leaves them there', async () => {
    const dir = join(TMP, 'demo-foreign');
    mkdirSync(join(dir, 'src'), { recursive: true });
    writeFileSync(join(dir, 'src', 'code.ts'), 'important');
    const result = await floe('demo', '--events', '5', '--data-dir', dir);
    expectOneLineError(result, 1, /--data-dir .*demo-foreign holds files the demo did not write \(src\)/);
    expect(readdirSync(dir)).toEqual(['src']);
    expect(readdirSync(join(dir, 'src'))).toEqual(['code.ts']);
  });

  it('refuses a data directory of other jobs, and recreates its own on the next run', async () => {
    const other = await produced('demo-other-jobs');
    expectOneLineError(
      await floe('demo', '--events', '5', '--data-dir', other),
      1,
      /holds files the demo did not write \(floe\.db/,
    );
    expect(existsSync(join(other, 'floe.db'))).toBe(true);
    const own = join(TMP, 'demo-own');
    for (let run = 0; run < 2; run++) {
      const result = await floe('demo', '--events', '5', '--no-kill', '--data-dir', own);
      expect(result.code, result.stderr).toBe(0);
    }
  });
});
