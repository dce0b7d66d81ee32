/** `floe replay`: restore a savepoint (or start from a timestamp) into a new generation or job, then run it. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  asStateMigration,
  ConfigurationError,
  compile,
  isEventTime,
  MAX_EVENT_TIME,
  type StateMigration,
} from '../core/index.ts';
import {
  abandonRestore,
  prepareTimestampReplay,
  readManifest,
  restoreSavepoint,
} from '../runtime/savepoints.ts';
import {
  backendKind,
  formatCount,
  formatTime,
  jobIdFlag,
  MAX_BATCH_SIZE,
  MAX_LEASE_TTL,
  nonNegativeInt,
  oneOf,
  parseFlags,
  positiveInt,
  savepointIdArg,
  streamFlag,
  UsageError,
} from './args.ts';
import { checkModulePath } from './files.ts';
import { importModule, loadPipeline } from './load-pipeline.ts';
import { checkBackendFlags, checkSinkBindings, runRun } from './run.ts';
import {
  BACKEND_HELP,
  BACKEND_OPTIONS,
  type BackendValues,
  describeManifest,
  faultHook,
  openSavepointBackend,
  progressPrinter,
} from './savepoint-backend.ts';

export const REPLAY_HELP = `floe replay --from-savepoint <id> [--as-job <new-id>] [--pipeline <module.ts>] [options]
floe replay --from-timestamp <time> --pipeline <module.ts> [--as-job <id>] [options]
floe replay --abandon --job <id> [backend options]

--from-savepoint restores a savepoint and runs the job from it: each shard resumes right after
its savepoint position, with its watermark and timers. Without --as-job the savepoint's job is
restored into a new state generation (the old one is kept; its workers stop); with --as-job the
copy is a new job that runs beside the original. A changed pipeline restores when its state is
compatible (same operator uids, state kinds); an incompatible one is refused unless a migration
is supplied. Records after a savepoint position that were trimmed by the stream's retention
are reported and nothing is restored. Everything is checked before anything is written; a
crash is safe: rerun the same command.

--from-timestamp starts a job (new, or a new generation of --as-job) with empty state, reading
every shard from the first record that arrived at or after <time>: epoch ms, or ISO 8601 as
2026-01-01 (UTC), 2026-01-01T10:00:00Z or 2026-01-01T12:00:00+02:00 (a time needs its offset).

--abandon gives up the unfinished restore into job <id> (the --as-job id of the replay, if it
had one): the job goes back to the generation it ran before (a job the restore created is
removed), what the restore wrote is deleted, and a restore process still running stops. A later
replay restores into a fresh generation (a later job of a removed id starts in one too).

Options:
  --as-job <id>                  restore into / start this job id (default: the savepoint's job)
  --pipeline <module.ts>         the pipeline to run (default: the module the savepoint's job ran)
  --migration <module.ts>        a module whose default export migrates saved state (docs/savepoints.md)
  --allow-non-restored-state     drop the state of operators the pipeline no longer has
  --stream <name>                (--from-timestamp) the stream (default: the job's, else the pipeline name)
  --restore-only                 restore, but do not run; start it later with 'floe run'
  --job <id>                     (aws) the job whose resources hold the savepoint (default names);
                                 with --abandon, the job whose restore to give up (required)
  --abandon                      give up the unfinished restore into --job (see above)
Run options (as for 'floe run'; checked before anything is restored): --until-idle, --batch-size <N>,
  --commit-interval <ms>, --lease-ttl <ms>, --max-cached-keys <N>, --progress <mode>,
  --sink <name=destination> (aws)
${BACKEND_HELP}`;

export async function runReplay(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('replay', {
    args,
    allowPositionals: true,
    options: {
      ...BACKEND_OPTIONS,
      'from-savepoint': { type: 'string' },
      'from-timestamp': { type: 'string' },
      'as-job': { type: 'string' },
      job: { type: 'string' },
      pipeline: { type: 'string' },
      migration: { type: 'string' },
      'allow-non-restored-state': { type: 'boolean', default: false },
      stream: { type: 'string', short: 's' },
      'restore-only': { type: 'boolean', default: false },
      abandon: { type: 'boolean', default: false },
      'until-idle': { type: 'boolean', default: false },
      'batch-size': { type: 'string' },
      'commit-interval': { type: 'string' },
      'lease-ttl': { type: 'string' },
      'max-cached-keys': { type: 'string' },
      progress: { type: 'string' },
      sink: { type: 'string', multiple: true },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(REPLAY_HELP);
    return 0;
  }
  if (positionals.length > 0) {
    throw new UsageError(
      `replay takes no positional arguments (use --pipeline <module.ts>); received "${positionals[0]}"`,
    );
  }
  if (values.abandon) return runAbandon(values);
  const fromSavepoint = values['from-savepoint'];
  const fromTimestamp = values['from-timestamp'];
  if ((fromSavepoint === undefined) === (fromTimestamp === undefined)) {
    throw new UsageError('replay needs exactly one of --from-savepoint <id> or --from-timestamp <time>');
  }
  if (fromSavepoint !== undefined) savepointIdArg('--from-savepoint', fromSavepoint);
  const asJob = jobIdFlag('--as-job', values['as-job']);
  const jobFlag = jobIdFlag('--job', values.job);
  const streamName = streamFlag(values.stream);
  // The options for the run are checked before anything is restored, as 'floe run' checks them.
  const backend = backendKind(values);
  checkBackendFlags(backend, { sink: values.sink });
  positiveInt('--batch-size', values['batch-size'], 1000, MAX_BATCH_SIZE);
  nonNegativeInt('--commit-interval', values['commit-interval'], 0);
  positiveInt('--lease-ttl', values['lease-ttl'], 10_000, MAX_LEASE_TTL);
  positiveInt('--max-cached-keys', values['max-cached-keys'], 1);
  const quiet = oneOf('--progress', values.progress, ['auto', 'lines', 'none'], 'auto') === 'none';
  const runOptions = [
    ...(values['until-idle'] ? ['--until-idle'] : []),
    ...(['batch-size', 'commit-interval', 'lease-ttl', 'max-cached-keys', 'progress'] as const).flatMap(
      (flag) => (values[flag] === undefined ? [] : [`--${flag}`, values[flag]]),
    ),
    ...(values.sink ?? []).flatMap((s) => ['--sink', s]),
  ];

  let job: string;
  let stream: string;
  let module: string;
  let runArgs: readonly string[];
  if (fromSavepoint !== undefined) {
    const opened = await openSavepointBackend(values, jobFlag ?? asJob);
    const progress = progressPrinter(quiet);
    try {
      const manifest = await readManifest(opened.backend.snapshots, fromSavepoint);
      const modulePath = values.pipeline ?? manifest.pipeline.module;
      if (modulePath === undefined || !existsSync(modulePath)) {
        throw new UsageError(
          `replay needs --pipeline <module.ts>: the savepoint does not name an existing pipeline module${manifest.pipeline.module ? ` (${manifest.pipeline.module} is gone)` : ''}`,
        );
      }
      const plan = compile(await loadPipeline(modulePath));
      if (backend === 'aws') {
        await checkSinkBindings(values.sink ?? [], plan);
        await (await import('./run-aws.ts')).checkAwsSinkDestinations(values.sink ?? []);
      }
      const migration = values.migration === undefined ? undefined : await loadMigration(values.migration);
      const onStep = faultHook('restore');
      const result = await restoreSavepoint(opened.backend, {
        savepointId: manifest.id,
        plan,
        ...(asJob === undefined ? {} : { asJob }),
        ...(migration === undefined ? {} : { migration }),
        allowNonRestoredState: values['allow-non-restored-state'],
        commandArgs: opened.commandArgs,
        pipeline: { name: plan.name, version: plan.version, module: resolve(modulePath) },
        onProgress: progress.onProgress,
        ...(onStep === undefined ? {} : { onStep }),
      });
      progress.done();
      for (const w of result.warnings) console.error(`floe replay: warning: ${w}`);
      console.error(
        `floe replay: restored ${describeManifest(manifest)} into job ${result.job}, generation ${result.generation}: ${describeWritten(result.written, result.entries, migration?.state !== undefined)}, ${result.shards} shard checkpoint(s)`,
      );
      job = result.job;
      stream = manifest.stream;
      module = modulePath;
      runArgs = opened.runArgs;
    } finally {
      progress.done();
      await opened.close();
    }
  } else {
    if (values.pipeline === undefined)
      throw new UsageError('replay --from-timestamp needs --pipeline <module.ts>');
    const timestamp = parseTime(fromTimestamp!);
    const pipeline = await loadPipeline(values.pipeline);
    const plan = compile(pipeline);
    if (backend === 'aws') {
      await checkSinkBindings(values.sink ?? [], plan);
      await (await import('./run-aws.ts')).checkAwsSinkDestinations(values.sink ?? []);
    }
    job = asJob ?? jobFlag ?? pipeline.name;
    const opened = await openSavepointBackend(values, job);
    try {
      stream = streamName ?? (await opened.backend.jobs.get(job))?.stream ?? pipeline.name;
      const record = await prepareTimestampReplay(opened.backend, {
        job,
        stream,
        timestamp,
        plan,
        pipeline: { name: plan.name, version: plan.version, module: resolve(values.pipeline) },
        commandArgs: opened.commandArgs,
      });
      console.error(
        `floe replay: job ${job} (generation ${record.generation}) reads stream "${stream}" from ${formatTime(timestamp)} (AT_TIMESTAMP) with empty state`,
      );
      module = values.pipeline;
      runArgs = opened.runArgs;
    } finally {
      await opened.close();
    }
  }
  if (values['restore-only']) {
    console.error(`  run it with: floe run ${module} --job ${job} ${runArgs.join(' ')}`.trimEnd());
    return 0;
  }
  return runRun([module, '--job', job, '--stream', stream, ...runArgs, ...runOptions]);
}

/** The options `--abandon` takes: the job and the backend options. */
const ABANDON_OPTIONS = new Set(['abandon', 'job', ...Object.keys(BACKEND_OPTIONS)]);

/** `floe replay --abandon --job <id>`: gives up the job's unfinished restore (abandonRestore). */
async function runAbandon(values: Record<string, unknown>): Promise<number> {
  const other = Object.keys(values).find(
    (flag) => !ABANDON_OPTIONS.has(flag) && values[flag] !== undefined && values[flag] !== false,
  );
  if (other !== undefined) {
    throw new UsageError(
      `--abandon takes only --job <id> and the backend options; received --${other}${other === 'as-job' ? ' (pass the --as-job id of the replay as --job)' : ''}`,
    );
  }
  if (values.job === undefined) {
    throw new UsageError(
      'replay --abandon needs --job <id>: the job whose restore to give up (the --as-job id of the replay, if it had one)',
    );
  }
  const job = jobIdFlag('--job', values.job as string);
  const opened = await openSavepointBackend(values as BackendValues, job);
  try {
    const result = await abandonRestore(opened.backend, { job });
    const deleted = `${formatCount(result.discarded.stateEntries)} state entries and ${formatCount(result.discarded.checkpoints)} shard checkpoint(s)`;
    const what = `the restore of savepoint ${result.savepointId} into job ${job} (generation ${result.generation})`;
    const abandoned = `floe replay: abandoned ${what}${result.resumed ? ' (finishing an interrupted abandon)' : ''}`;
    console.error(
      result.laterJob !== undefined
        ? `${abandoned}: deleted what it wrote (${deleted}); job ${job} has moved on since: another command started generation ${result.laterJob.generation} (${result.laterJob.state}) after the abandon had given the restore up`
        : result.record === undefined
          ? `${abandoned}: job ${job}, which the restore had created, is removed with what the restore wrote (${deleted}); the id can be used again (a later job of it starts at generation ${result.nextGeneration})`
          : `${abandoned}: deleted what it wrote (${deleted}); job ${job} is back on generation ${result.record.generation} (${result.record.state}), and a later replay restores into a new generation`,
    );
    return 0;
  } finally {
    await opened.close();
  }
}

/** "120 state entries", or what was read and written when they differ (dropped or migrated). */
function describeWritten(written: number, read: number, migrated: boolean): string {
  if (written === read) return `${formatCount(written)} state entries`;
  if (migrated) {
    return `${formatCount(written)} state entries written (migrated from ${formatCount(read)} saved)`;
  }
  return `${formatCount(written)} of ${formatCount(read)} saved state entries written (${formatCount(read - written)} dropped: their operators are not in the pipeline)`;
}

/**
 * `--from-timestamp`: epoch milliseconds (digits) or an ISO 8601 date (UTC midnight) or date and
 * time with its offset (`Z`, `+02:00`). Date.parse alone would take far more, silently: "-5" as
 * May 2001, "1.5" as January 5th 2001, "2026-02-30" as March 2nd, and a time without an offset in
 * the local time zone of whoever runs the replay.
 */
export function parseTime(text: string): number {
  const fail = (why: string): never => {
    throw new UsageError(
      `--from-timestamp must be epoch milliseconds or an ISO 8601 date, or date and time with its offset (2026-01-01, 2026-01-01T10:00:00Z, 2026-01-01T12:00:00+02:00)${why}; received "${text}"`,
    );
  };
  let t: number;
  if (/^\d+$/.test(text)) t = Number(text);
  else {
    const iso =
      /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?)?$/.exec(
        text,
      );
    if (iso === null) return fail('');
    const [, year, month, day, hour, minute, second, offset] = iso.map((part) => part ?? '');
    if (hour !== '' && offset === '') {
      fail(': a time needs its offset (Z for UTC), or it would be read in the local time zone');
    }
    // Date.parse rolls an impossible date over ("2026-02-30" is March 2nd): compare the fields.
    const midnight = new Date(Date.UTC(Number(year), Number(month) - 1, Number(day)));
    if (
      midnight.getUTCMonth() !== Number(month) - 1 ||
      midnight.getUTCDate() !== Number(day) ||
      Number(hour) > 23 ||
      Number(minute) > 59 ||
      Number(second) > 59
    ) {
      fail(': there is no such date or time');
    }
    t = Date.parse(text);
    if (Number.isNaN(t)) fail(': there is no such date or time'); // an offset of +25:00
  }
  // Within a Date's range: Kinesis AT_TIMESTAMP takes a Date.
  if (!isEventTime(t)) fail(`, within ±${MAX_EVENT_TIME} ms (a Date's range)`);
  return t;
}

async function loadMigration(path: string): Promise<StateMigration> {
  checkModulePath(path, '--migration module');
  const loaded = await importModule(path, '--migration module');
  const exported = loaded.default ?? loaded.migrate;
  if (exported === undefined) {
    // `export const m = ...` without `export default m`: name the exports, and which to make the default.
    const named = Object.keys(loaded).filter((name) => name !== 'default');
    const migrations = named.filter((name) => {
      try {
        asStateMigration(loaded[name]);
        return true;
      } catch {
        return false;
      }
    });
    const exports = named.length === 0 ? '' : ` (its exports: ${named.map((n) => `"${n}"`).join(', ')})`;
    const hint =
      migrations.length === 0 ? '' : `; to use "${migrations[0]}", add \`export default ${migrations[0]};\``;
    throw new ConfigurationError(
      `--migration module ${path} has no default export${exports}: export the migration as its default (export default (entry) => entry, or export default { state(entry) {...}, timer(timer) {...} })${hint}`,
    );
  }
  try {
    return asStateMigration(exported);
  } catch (error) {
    throw new ConfigurationError(`--migration module ${path}: ${(error as Error).message}`);
  }
}
