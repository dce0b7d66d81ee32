/**
 * The embedded backend for one job: one SQLite file (`<dataDir>/floe.db`) holds the local log,
 * the job's state, checkpoints and outbox, and a table per job with its published outputs.
 */
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ConfigurationError, type PipelinePlan, type StartPosition } from '../core/index.ts';
import { checkJobId } from '../core/job-id.ts';
import type { JobRuntime } from '../runtime/job.ts';
import { type JobControl, outputJobId } from '../runtime/job-control.ts';
import { LocalLog } from './local-log.ts';
import { outputTableName, SqliteTableSink } from './sinks.ts';
import { openSqlite, type SqliteDatabase } from './sqlite.ts';
import { SqliteBackend } from './sqlite-backend.ts';

/** Default data directory of the embedded backend (relative to the working directory). */
export const DEFAULT_DATA_DIR = '.floe';

/**
 * The options a command floe suggests (a resume, a rerun, an abandon) needs to reach this data
 * directory and savepoint directory: none for the defaults. Pasted into a shell as printed.
 */
export function embeddedCommandArgs(dataDir: string, savepointDir?: string): string {
  const args: string[] = [];
  if (dataDir !== DEFAULT_DATA_DIR) args.push(`--data-dir ${shellWord(dataDir)}`);
  if (savepointDir !== undefined) args.push(`--savepoint-dir ${shellWord(savepointDir)}`);
  return args.join(' ');
}

/** `word` as one shell word: as it is when it has no special characters, else single-quoted. */
function shellWord(word: string): string {
  return /^[\w./@:+,=-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

export function databasePath(dataDir: string): string {
  return join(dataDir, 'floe.db');
}

/**
 * The database of an embedded data directory, which must exist (only `floe produce` creates
 * one): else a ConfigurationError saying there is none and, in `remedy`, what to do.
 */
/**
 * Refuses a data directory that is a file, such as `--data-dir .floe/floe.db` (the database
 * itself, where its directory is meant), saying which directory to pass.
 */
export function checkDataDirNotFile(dataDir: string): void {
  if (!existsSync(dataDir) || statSync(dataDir).isDirectory()) return;
  throw new ConfigurationError(
    `--data-dir ${dataDir} is a file, not a directory; pass the directory that holds floe.db${basename(dataDir) === 'floe.db' ? ` (${dirname(dataDir)})` : ''}`,
  );
}

export function existingDatabase(dataDir: string, remedy: string): string {
  const path = databasePath(dataDir);
  if (existsSync(path)) return path;
  checkDataDirNotFile(dataDir);
  throw new ConfigurationError(`no embedded data at ${path}; ${remedy}`);
}

export interface EmbeddedJob {
  readonly runtime: JobRuntime;
  readonly log: LocalLog;
  readonly backend: SqliteBackend;
  readonly sink: SqliteTableSink;
  readonly db: SqliteDatabase;
  close(): Promise<void>;
}

export async function openEmbeddedJob(options: {
  readonly dataDir: string;
  readonly stream: string;
  readonly job: string;
  readonly plan: PipelinePlan;
  readonly clock?: () => number;
  /** State generation (from the job record). @default 0 */
  readonly generation?: number;
  /** Where shards without a checkpoint start. @default TRIM_HORIZON */
  readonly startPosition?: StartPosition;
  /** The job record's control (savepoint pause, stop). */
  readonly control?: JobControl;
}): Promise<EmbeddedJob> {
  const job = checkJobId(options.job);
  const db = openSqlite(databasePath(options.dataDir));
  const log = new LocalLog(db, options.clock === undefined ? {} : { clock: options.clock });
  const streams = await log.listStreams();
  if (!streams.includes(options.stream)) {
    db.close();
    throw new ConfigurationError(
      `unknown stream "${options.stream}" in ${databasePath(options.dataDir)}; streams: ${streams.join(', ') || 'none'}. Create it with 'floe produce --stream ${options.stream} ...'`,
    );
  }
  const generation = options.generation ?? 0;
  const backend = new SqliteBackend(db, { job, generation });
  const sink = new SqliteTableSink(db, { table: outputTableName(job) });
  return {
    runtime: {
      job: outputJobId(job, generation),
      plan: options.plan,
      source: log.source(options.stream),
      backend,
      sink,
      ...(options.clock === undefined ? {} : { clock: options.clock }),
      ...(options.startPosition === undefined ? {} : { startPosition: options.startPosition }),
      ...(options.control === undefined ? {} : { control: options.control }),
    },
    log,
    backend,
    sink,
    db,
    async close() {
      db.close();
    },
  };
}
