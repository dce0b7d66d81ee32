/**
 * Savepoints on the embedded backend: state and checkpoints from the SQLite file, the local log
 * as the stream, job records in floe_job, savepoint files in a directory
 * (`<data-dir>/savepoints` by default).
 */
import { join } from 'node:path';
import {
  ConfigurationError,
  errorMessage,
  type ShardCheckpoint,
  type SnapshotStore,
  serializeCheckpoint,
} from '../core/index.ts';
import {
  namesRestore,
  type RestoreGuard,
  type ResumePoint,
  type SavepointBackend,
  type StateScope,
  supersededRestore,
} from '../runtime/savepoints.ts';
import { SqliteJobStore } from './job-store.ts';
import { LocalLog, TrimmedPositionError } from './local-log.ts';
import { DirectorySnapshotStore } from './snapshot-dir.ts';
import type { SqliteDatabase } from './sqlite.ts';
import { SqliteBackend } from './sqlite-backend.ts';

export function defaultSavepointDir(dataDir: string): string {
  return join(dataDir, 'savepoints');
}

/**
 * The state of one (job, generation) of a SQLite file, for export and restore. A restore's
 * writes check its guard against the job record (in `jobs`, the same file) in the transaction
 * that writes them.
 */
export function sqliteStateScope(
  db: SqliteDatabase,
  job: string,
  generation: number,
  jobs: SqliteJobStore = new SqliteJobStore(db),
): StateScope {
  const backend = new SqliteBackend(db, { job, generation });
  const check = (guard: RestoreGuard) => (): void => {
    if (!namesRestore(jobs.read(guard.job), guard)) throw supersededRestore(guard);
  };
  return {
    backend,
    async *entries() {
      yield* backend.entries({ pageSize: 2000 });
    },
    async countEntries() {
      return backend.countEntries();
    },
    async importEntries(entries, guard) {
      backend.importEntries(entries, undefined, check(guard));
    },
    async importCheckpoint(checkpoint: ShardCheckpoint, guard) {
      const existing = await backend.readCheckpoint(checkpoint.shardId);
      if (existing === undefined) {
        backend.importCheckpoint(checkpoint, check(guard));
        return;
      }
      if (serializeCheckpoint(existing) !== serializeCheckpoint(checkpoint)) {
        throw new ConfigurationError(
          `shard ${checkpoint.shardId} of job ${job} already has another checkpoint in generation ${generation}; restore into a new generation or job`,
        );
      }
    },
    async importOutputs(shardId, outputs, guard) {
      backend.importOutputs(shardId, outputs, check(guard));
    },
    async isEmpty() {
      return backend.countEntries() === 0 && (await backend.listCheckpoints()).length === 0;
    },
    async discard() {
      return backend.dropScope();
    },
  };
}

export interface EmbeddedSavepointOptions {
  /** The open database holding the log, the state and the job records. */
  readonly db: SqliteDatabase;
  /** Savepoint directory, or any SnapshotStore. */
  readonly savepoints: string | SnapshotStore;
  /** Wall clock of the local log (retention). */
  readonly clock?: () => number;
}

export function embeddedSavepointBackend(options: EmbeddedSavepointOptions): SavepointBackend {
  const log = new LocalLog(options.db, options.clock === undefined ? {} : { clock: options.clock });
  const snapshots =
    typeof options.savepoints === 'string'
      ? new DirectorySnapshotStore(options.savepoints)
      : options.savepoints;
  const jobs = new SqliteJobStore(options.db);
  return {
    kind: 'embedded',
    jobs,
    snapshots,
    scope: (job, generation) => sqliteStateScope(options.db, job, generation, jobs),
    source: (stream) => log.source(stream),
    checkResumable: (stream, shard) => localLogResumable(log, stream, shard),
  };
}

/**
 * Exact on the local log: a reader opened after the position throws TrimmedPositionError when a
 * record after it was trimmed.
 */
async function localLogResumable(
  log: LocalLog,
  stream: string,
  shard: ResumePoint,
): Promise<string | undefined> {
  if (shard.finished) return undefined;
  let listed: boolean;
  try {
    listed = (await log.source(stream).listShards()).some((s) => s.shardId === shard.shardId);
  } catch (error) {
    return `stream "${stream}" cannot be read (${errorMessage(error)})`;
  }
  if (!listed) {
    return `shard ${shard.shardId} is no longer in stream "${stream}" (closed and expired after the stream's retention) but the savepoint has not finished reading it`;
  }
  if (shard.position === undefined) return undefined;
  try {
    const reader = await log
      .source(stream, { onTrimmed: 'throw' })
      .openReader(shard.shardId, { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber: shard.position });
    await reader.read(1);
    await reader.close();
    return undefined;
  } catch (error) {
    if (error instanceof TrimmedPositionError) {
      return `records of shard ${shard.shardId} after position ${shard.position} were trimmed by the retention of stream "${stream}" (trimmed through ${error.trimmedThrough})`;
    }
    return `shard ${shard.shardId} cannot be read after position ${shard.position}: ${(error as Error).message}`;
  }
}
