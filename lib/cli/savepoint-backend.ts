import { type Stats, statSync } from 'node:fs';
import type { SavepointManifest } from '../core/index.ts';
import { DEFAULT_DATA_DIR, embeddedCommandArgs, existingDatabase } from '../embedded/job.ts';
import { defaultSavepointDir, embeddedSavepointBackend } from '../embedded/savepoints.ts';
import { openSqlite } from '../embedded/sqlite.ts';
import type { SavepointBackend, SavepointProgress, SavepointStep } from '../runtime/savepoints.ts';
import { backendKind, bar, formatCount, UsageError } from './args.ts';

/** Options every savepoint/replay command accepts (parseArgs definitions). */
export const BACKEND_OPTIONS = {
  backend: { type: 'string' },
  'data-dir': { type: 'string' },
  'savepoint-dir': { type: 'string' },
  'state-table': { type: 'string' },
  'control-table': { type: 'string' },
  bucket: { type: 'string' },
} as const;

export const BACKEND_HELP = `Backend options:
  --backend <embedded|aws>     embedded (default): SQLite in --data-dir; aws: DynamoDB, Kinesis, S3
  --data-dir <dir>             embedded data directory (default .floe)
  --savepoint-dir <dir|s3://bucket/prefix/>
                               where savepoints are (default <data-dir>/savepoints, or
                               s3://<bucket>/savepoints/ on AWS)
  --state-table, --control-table, --bucket <name>
                               AWS resources (default floe-<job>-state / -control, floe-<job>)`;

export interface BackendValues {
  readonly backend?: string | undefined;
  readonly 'data-dir'?: string | undefined;
  readonly 'savepoint-dir'?: string | undefined;
  readonly 'state-table'?: string | undefined;
  readonly 'control-table'?: string | undefined;
  readonly bucket?: string | undefined;
}

export interface OpenedBackend {
  readonly kind: 'embedded' | 'aws';
  readonly backend: SavepointBackend;
  /** Arguments that make `floe run` use the same backend and resources. */
  readonly runArgs: readonly string[];
  /**
   * What the commands floe suggests (replay, abandon) add to reach the same backend and
   * resources, as one string ('' for the embedded defaults).
   */
  readonly commandArgs: string;
  close(): Promise<void>;
}

/**
 * Opens the savepoint backend. `job` names the job whose resources are meant (AWS default
 * resource names derive from it). On AWS, missing resources, region or credentials and an
 * unreachable endpoint are reported here, in one line, before the command does anything.
 */
export async function openSavepointBackend(
  values: BackendValues,
  job: string | undefined,
  /**
   * What the command uses, checked first on AWS: only the savepoints (list, inspect), or the
   * job's tables and bucket too.
   */
  needs: 'savepoints' | 'job' = 'job',
): Promise<OpenedBackend> {
  if (backendKind(values) === 'embedded') {
    checkEmbeddedSavepointDir(values['savepoint-dir']);
    const dataDir = values['data-dir'] ?? DEFAULT_DATA_DIR;
    const path = existingDatabase(dataDir, "run 'floe produce' and 'floe run' first, or pass --data-dir");
    const db = openSqlite(path);
    const savepointDir = values['savepoint-dir'] ?? defaultSavepointDir(dataDir);
    return {
      kind: 'embedded',
      backend: embeddedSavepointBackend({ db, savepoints: savepointDir }),
      runArgs: ['--data-dir', dataDir],
      commandArgs: embeddedCommandArgs(dataDir, values['savepoint-dir']),
      async close() {
        db.close();
      },
    };
  }
  if (
    job === undefined &&
    (values['state-table'] === undefined ||
      values['control-table'] === undefined ||
      values.bucket === undefined)
  ) {
    // A missing option: a usage error (exit 2), before any AWS client is made.
    throw new UsageError(
      'on the aws backend, pass --job <id> (its default resources: floe-<job>-state, floe-<job>-control, bucket floe-<job>) or --state-table, --control-table and --bucket',
    );
  }
  const { openAwsSavepointBackend } = await import('../aws/savepoints.ts');
  const { explainAwsError } = await import('./run-aws.ts');
  const opened = await openAwsSavepointBackend(values, job);
  try {
    await opened.preflight(needs);
  } catch (error) {
    await opened.close();
    throw explainAwsError(error);
  }
  return opened;
}

/**
 * The embedded backend's --savepoint-dir is a local directory: an s3:// location (which only
 * --backend aws reads), an empty path or a file is a usage error, where the first made a local
 * directory named "s3:" and a file failed with ENOTDIR once the export had started.
 */
function checkEmbeddedSavepointDir(dir: string | undefined): void {
  if (dir === undefined) return;
  if (dir === '') throw new UsageError('--savepoint-dir needs a directory path; received ""');
  if (dir.startsWith('s3://')) {
    throw new UsageError(
      `--savepoint-dir ${dir}: savepoints in S3 need --backend aws; the embedded backend keeps them in a local directory (default <data-dir>/savepoints)`,
    );
  }
  let stats: Stats | undefined;
  try {
    stats = statSync(dir);
  } catch {
    return; // created when a savepoint is written
  }
  if (!stats.isDirectory()) {
    throw new UsageError(`--savepoint-dir ${dir} is not a directory; pass a directory path`);
  }
}

/** Exit the process at a fault-injection step named by FLOE_FAULT (`<command>:<step>[:<index>]`). */
export function faultHook(
  command: 'savepoint' | 'restore',
): ((step: SavepointStep, index?: number) => void) | undefined {
  const spec = process.env.FLOE_FAULT;
  if (spec === undefined || spec === '') return undefined;
  const [which, step, at] = spec.split(':');
  if (which !== command) return undefined;
  return (s, index) => {
    if (s === step && (at === undefined || Number(at) === index)) {
      process.stderr.write(`\nfloe: FLOE_FAULT=${spec}: crashing now (SIGKILL)\n`);
      process.kill(process.pid, 'SIGKILL');
    }
  };
}

/** A progress display on stderr: a live bar on a terminal; otherwise a line per phase and every 2 s. */
export function progressPrinter(quiet: boolean): {
  onProgress: (p: SavepointProgress) => void;
  done: () => void;
} {
  const live = Boolean(process.stderr.isTTY);
  let phase = '';
  let lastLine = '';
  let printed = '';
  let lastPrint = 0;
  let shown = false;
  const print = (line: string): void => {
    process.stderr.write(`${line}\n`);
    printed = line;
    lastPrint = Date.now();
  };
  return {
    onProgress(p) {
      if (quiet) return;
      let line: string;
      if (p.phase === 'pausing') {
        line = `pausing the job: waiting for ${p.waitingFor.length} shard(s) to reach a commit boundary (${p.waitingFor.slice(0, 3).join(', ')}${p.waitingFor.length > 3 ? ', ...' : ''})`;
      } else {
        const label = { export: 'exporting', verify: 'verifying', restore: 'restoring' }[p.phase];
        // Without a total (the AWS export does not count the entries first) there is no fraction
        // to draw: a bar would read 100% after the first file.
        const progress = p.total === undefined ? '' : `${bar(p.total === 0 ? 1 : p.entries / p.total)} `;
        line = `${label.padEnd(9)} ${progress}${formatCount(p.entries)}${p.total === undefined ? '' : `/${formatCount(p.total)}`} entries, ${p.files} file(s)`;
      }
      if (live) {
        process.stderr.write(`\r\x1b[2K${line}`);
        shown = true;
      } else if (p.phase !== phase) {
        if (lastLine !== printed && lastLine !== '') print(lastLine); // the previous phase's last state
        print(line);
      } else if (Date.now() - lastPrint > 2000) {
        print(line);
      }
      phase = p.phase;
      lastLine = line;
    },
    done() {
      if (live && shown) process.stderr.write('\n');
      if (!live && lastLine !== printed && lastLine !== '') print(lastLine);
      shown = false;
      lastLine = '';
      printed = '';
    },
  };
}

export function describeManifest(m: SavepointManifest): string {
  return `savepoint ${m.id} of job ${m.job} (generation ${m.generation}, pipeline ${m.pipeline.name} version ${m.pipeline.version}): ${formatCount(m.entries)} state entries in ${m.files.length} file(s), ${formatBytes(m.bytes)}, ${m.shards.length} shard(s)${m.stopped ? ', job stopped' : ''}`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
