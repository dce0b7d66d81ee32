/**
 * `floe savepoint` and `floe replay` on the embedded backend, run for real as child processes
 * of `node bin/floe.js`: a real crash (SIGKILL, injected with FLOE_FAULT) during the export and
 * during the restore, reruns, list / inspect / delete, stop-with-savepoint and the refusals.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Exit, killRunningCli, ROOT, runCli } from '../cli/testing/run-cli.ts';
import { deserializeCheckpoint, type SavepointManifest } from '../core/index.ts';
import { SqliteJobStore } from './job-store.ts';
import { dataDir, outputsOf, produce, STREAM, tmpRoot, valuesByShard } from './testing/savepoint-harness.ts';
import { generateClicks } from './testing/savepoint-pipelines.ts';

const V1 = join(ROOT, 'lib/embedded/testing/clicks-v1.ts');
const SESSION = join(ROOT, 'lib/embedded/testing/clicks-session.ts');
const TMP = tmpRoot();
afterAll(() => {
  killRunningCli();
  rmSync(TMP, { recursive: true, force: true });
});

/** `floe ...args`, FLOE_FAULT cleared unless `env` sets it. */
const floe = (args: readonly string[], env: Record<string, string> = {}): Promise<Exit> =>
  runCli(args, { FLOE_FAULT: '', ...env });

const CLICKS = generateClicks(3000, { seed: 11 });

describe('floe savepoint and floe replay (embedded, as processes)', () => {
  it('survive real crashes during export and restore; list, inspect, delete; stop and resume', async () => {
    const data = await dataDir(TMP);
    const D = ['--data-dir', data.dir];
    const run = (job: string, ...more: string[]) =>
      floe([
        'run',
        V1,
        '--job',
        job,
        '--stream',
        STREAM,
        ...D,
        '--until-idle',
        '--progress',
        'none',
        ...more,
      ]);
    await produce(data.log, CLICKS.slice(0, 1500));
    expect((await run('cli')).code).toBe(0);

    // A real crash (SIGKILL) after the second state file of the export.
    const crashed = await floe(
      ['savepoint', 'create', '--job', 'cli', ...D, '--chunk-entries', '2', '--lease-ttl', '1000'],
      { FLOE_FAULT: 'savepoint:file-written:1' },
    );
    expect(crashed.signal).toBe('SIGKILL');
    const [id] = readdirSync(join(data.dir, 'savepoints'));
    expect(id).toMatch(/^cli-\d{8}T\d{6}Z-[0-9a-f]{4}$/);
    expect(existsSync(join(data.dir, 'savepoints', id!, 'manifest.json'))).toBe(false);
    const listed = await floe(['savepoint', 'list', ...D]);
    expect(listed.stdout).toMatch(new RegExp(`${id}\\s.*incomplete`));
    const early = await floe(['replay', '--from-savepoint', id!, '--as-job', 'early', ...D]);
    expect(early.code).toBe(1);
    expect(early.stderr).toMatch(/^floe: savepoint .* is incomplete: it has no manifest\.json/);

    // The rerun completes the same savepoint.
    await new Promise((r) => setTimeout(r, 1100));
    const created = await floe(['savepoint', 'create', '--job', 'cli', ...D, '--chunk-entries', '2']);
    expect(created.code).toBe(0);
    expect(created.stdout.trim()).toBe(id);
    expect(created.stderr).toMatch(
      /floe savepoint: savepoint cli-.* of job cli \(generation 0, pipeline sp-clicks version v1\)/,
    );
    const inspected = await floe(['savepoint', 'inspect', id!, '--verify', ...D]);
    expect(inspected.code).toBe(0);
    expect(inspected.stdout).toMatch(/shardId-000000000000 {2}position \d+/);
    expect(inspected.stdout).toMatch(/counts {2}window \(tumbling windows\) {2}state: w: map/);
    expect(inspected.stdout).toMatch(/verified: every file matches its sha256/);
    const manifest = JSON.parse(
      (await floe(['savepoint', 'inspect', id!, '--json', ...D])).stdout,
    ) as SavepointManifest;
    expect(manifest.pipeline.module).toBe(V1);
    // A --migration module that is missing or a directory is a usage error, before any restore.
    for (const [migration, said] of [
      [join(TMP, 'no-such-migration.ts'), /^floe: --migration module not found: .*no-such-migration\.ts /],
      [TMP, /^floe: --migration module .* is a directory; pass the path of the module's \.ts file$/],
    ] as const) {
      const refused = await floe([
        'replay',
        '--from-savepoint',
        id!,
        '--as-job',
        'm',
        ...D,
        '--migration',
        migration,
      ]);
      expect(refused.code, refused.stderr).toBe(2);
      expect(refused.stderr.trim()).toMatch(said);
    }

    await produce(data.log, CLICKS.slice(1500));
    // A real crash during the restore; the half-restored job refuses to run; a rerun completes it.
    const restoreCrash = await floe(
      ['replay', '--from-savepoint', id!, '--as-job', 'copy', ...D, '--until-idle'],
      {
        FLOE_FAULT: 'restore:entries-written:0',
      },
    );
    expect(restoreCrash.signal).toBe('SIGKILL');
    const notYet = await run('copy');
    expect(notYet.code).toBe(1);
    expect(notYet.stderr).toMatch(
      /^floe: job copy is being restored from savepoint .* has not completed; rerun the 'floe replay'/,
    );
    const replayed = await floe([
      'replay',
      '--from-savepoint',
      id!,
      '--as-job',
      'copy',
      ...D,
      '--until-idle',
      '--progress',
      'none',
    ]);
    expect(replayed.code).toBe(0);
    expect(replayed.stderr).toMatch(/floe replay: restored savepoint .* into job copy, generation 0/);
    expect((await run('cli')).code).toBe(0);
    const cut = new Map(
      manifest.shards.map((s) => {
        const cp = deserializeCheckpoint(JSON.stringify(s.checkpoint));
        return [cp.shardId, cp.commitNumber];
      }),
    );
    expect(valuesByShard(outputsOf(data.db, 'copy'))).toEqual(valuesByShard(outputsOf(data.db, 'cli'), cut));

    // An incompatible pipeline is refused with one clear line.
    const incompatible = await floe([
      'replay',
      '--from-savepoint',
      id!,
      '--as-job',
      'sess',
      '--pipeline',
      SESSION,
      ...D,
    ]);
    expect(incompatible.code).toBe(1);
    const errorLines = incompatible.stderr.split('\n').filter((l) => l.startsWith('floe:'));
    expect(errorLines, incompatible.stderr).toHaveLength(1);
    expect(incompatible.stderr).toMatch(
      /changed from tumbling to session windows.*nothing was restored|nothing was restored.*tumbling to session/,
    );

    // Stop with a savepoint: floe run refuses; replay resumes it in a new generation.
    const stop = await floe(['savepoint', 'create', '--job', 'cli', '--stop', ...D]);
    expect(stop.code).toBe(0);
    const stopId = stop.stdout.trim();
    // The commands floe prints name the (non-default) data directory, so they work when pasted.
    expect(stop.stderr).toContain(
      `job cli is stopped; resume it with 'floe replay --from-savepoint ${stopId} --data-dir ${data.dir}'`,
    );
    const refused = await run('cli');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /^floe: job cli was stopped with savepoint .*; resume it with 'floe replay --from-savepoint/,
    );
    expect(refused.stderr).toContain(`--from-savepoint ${stopId} --job cli --data-dir ${data.dir}'`);
    const resumed = await floe(['replay', '--from-savepoint', stopId, ...D, '--restore-only']);
    expect(resumed.code).toBe(0);
    expect(resumed.stderr).toMatch(/into job cli, generation 1/);
    expect((await run('cli')).code).toBe(0);
    expect(await new SqliteJobStore(data.db).get('cli')).toMatchObject({ generation: 1, state: 'running' });

    // From a timestamp: a new job reading from the middle of the stream.
    const fromTs = await floe([
      'replay',
      '--from-timestamp',
      String(1_767_261_600_000 + 1000),
      '--pipeline',
      V1,
      '--as-job',
      'late-start',
      '--stream',
      STREAM,
      ...D,
      '--until-idle',
      '--progress',
      'none',
    ]);
    expect(fromTs.code).toBe(0);
    expect(fromTs.stderr).toMatch(/processed 2,000 records/);

    const deleted = await floe(['savepoint', 'delete', id!, ...D]);
    expect(deleted.code).toBe(0);
    const after = JSON.parse((await floe(['savepoint', 'list', '--json', ...D])).stdout) as Array<{
      id: string;
    }>;
    expect(after.map((s) => s.id)).toEqual([stopId]);
    data.close();
  }, 120_000);

  it('floe replay --abandon --job gives up a restore killed halfway, into the same job or a new one', async () => {
    const data = await dataDir(TMP);
    const D = ['--data-dir', data.dir];
    await produce(data.log, CLICKS.slice(0, 600));
    const ran = await floe([
      'run',
      V1,
      '--job',
      'ab',
      '--stream',
      STREAM,
      ...D,
      '--until-idle',
      '--progress',
      'none',
    ]);
    expect(ran.code, ran.stderr).toBe(0);

    // Usage errors, before anything is opened.
    for (const [args, said] of [
      [[], /^floe: replay --abandon needs --job <id>/],
      [
        ['--job', 'ab', '--as-job', 'x'],
        /^floe: --abandon takes only --job <id> and the backend options; received --as-job \(pass the --as-job id of the replay as --job\)$/,
      ],
      [
        ['--job', 'ab', '--from-savepoint', 'ab-1'],
        /^floe: --abandon takes only --job <id> and the backend options; received --from-savepoint$/,
      ],
      [['--job', 'ab', '--restore-only'], /received --restore-only$/],
      [['--job', '@ab'], /^floe: --job: /],
    ] as const) {
      const refused = await floe(['replay', '--abandon', ...args, ...D]);
      expect(refused.code, refused.stderr).toBe(2);
      expect(refused.stderr.trim()).toMatch(said);
    }
    const unknown = await floe(['replay', '--abandon', '--job', 'nope', ...D]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr.trim()).toMatch(
      /^floe: job nope has no job record, so there is no restore to abandon/,
    );

    const created = await floe(['savepoint', 'create', '--job', 'ab', ...D, '--chunk-entries', '2']);
    expect(created.code, created.stderr).toBe(0);
    const id = created.stdout.trim();
    const status = async () => (await floe(['status', '--job', 'ab', ...D])).stdout;
    const before = await status();
    const crashRestore = async (...asJob: string[]) => {
      const crashed = await floe(['replay', '--from-savepoint', id, ...asJob, ...D, '--restore-only'], {
        FLOE_FAULT: 'restore:entries-written:0',
      });
      expect(crashed.signal).toBe('SIGKILL');
    };

    // Into the same job: back on generation 0, as floe status shows it.
    await crashRestore();
    const same = await floe(['replay', '--abandon', '--job', 'ab', ...D]);
    expect(same.code, same.stderr).toBe(0);
    expect(same.stderr.trim()).toMatch(
      new RegExp(
        `^floe replay: abandoned the restore of savepoint ${id} into job ab \\(generation 1\\): deleted what it wrote \\(\\d+ state entries and 0 shard checkpoint\\(s\\)\\); job ab is back on generation 0 \\(running\\), and a later replay restores into a new generation$`,
      ),
    );
    expect(await status()).toBe(before);
    const nothing = await floe(['replay', '--abandon', '--job', 'ab', ...D]);
    expect(nothing.code).toBe(1);
    expect(nothing.stderr.trim()).toBe(
      'floe: job ab has no restore in progress: it runs generation 0 (running); there is nothing to abandon',
    );

    // Into a new job: removed; the savepoint can be deleted.
    await crashRestore('--as-job', 'ab2');
    const refused = await floe(['savepoint', 'delete', id, ...D]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/is being restored into job ab2/);
    const copy = await floe(['replay', '--abandon', '--job', 'ab2', ...D]);
    expect(copy.code, copy.stderr).toBe(0);
    expect(copy.stderr).toMatch(
      /abandoned the restore of savepoint .* into job ab2 \(generation 0\): job ab2, which the restore had created, is removed with what the restore wrote \(\d+ state entries and 0 shard checkpoint\(s\)\); the id can be used again/,
    );
    expect(await new SqliteJobStore(data.db).get('ab2')).toBeUndefined();
    const deleted = await floe(['savepoint', 'delete', id, ...D]);
    expect(deleted.code, deleted.stderr).toBe(0);
    data.close();
  }, 120_000);
});
