/**
 * Opening the embedded SQLite database: one file (WAL mode) that the state/checkpoint store,
 * the local log and the table sink can share, also across processes.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { ConfigurationError, errorMessage, TransientBackendError } from '../core/errors.ts';

export type SqliteDatabase = Database.Database;

export interface SqliteOpenOptions {
  /**
   * `NORMAL` (default) keeps every commit atomic and durable against a process crash; after a
   * power loss the newest commits may roll back (together: state, outputs and checkpoint), and
   * the records are reprocessed with the same output ids. `FULL` also survives a power loss.
   */
  readonly synchronous?: 'NORMAL' | 'FULL';
  /** How long a writer waits for another process's write lock. @default 5000 */
  readonly busyTimeoutMs?: number;
}

/** Opens (creating the file and its directory if needed) a SQLite database in WAL mode. */
export function openSqlite(path: string, options: SqliteOpenOptions = {}): SqliteDatabase {
  if (typeof path !== 'string' || path.length === 0) {
    throw new ConfigurationError(
      `the SQLite database path must be a file path or ":memory:"; received ${JSON.stringify(path)}`,
    );
  }
  let db: SqliteDatabase;
  try {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    db = new Database(path);
  } catch (error) {
    throw new ConfigurationError(`cannot open the SQLite database ${path}: ${errorMessage(error)}`, {
      cause: error,
    });
  }
  try {
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(options.busyTimeoutMs ?? 5000))}`);
    // ':memory:' databases answer "memory"; files switch to WAL (persistent for the file).
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${options.synchronous ?? 'NORMAL'}`);
  } catch (error) {
    db.close();
    // The first statements are where SQLite finds a file that is not a database, or a file or
    // directory it cannot write (WAL needs files beside the database).
    const code = (error as { code?: unknown } | undefined)?.code;
    const why =
      code === 'SQLITE_NOTADB'
        ? 'it is not an SQLite database (is the data dir right?)'
        : typeof code === 'string' &&
            (code.startsWith('SQLITE_READONLY') || code.startsWith('SQLITE_CANTOPEN'))
          ? `it cannot be written (${code}): floe needs write access to the file and its directory`
          : errorMessage(error);
    throw new ConfigurationError(`cannot open the SQLite database ${path}: ${why}`, { cause: error });
  }
  return db;
}

/**
 * Runs `fn`, a write to the shared file, turning SQLite's "database is locked" (another process
 * held the write lock for longer than the busy timeout: a long `floe produce` transaction, a
 * `sqlite3` shell) into a TransientBackendError. The runtime retries those, so a worker resumes
 * from its last commit in the next round instead of `floe run` stopping with an unexpected error.
 * A write that timed out this way changed nothing: the lock is taken when its transaction begins.
 */
export function retryIfBusy<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    const code = (error as { code?: unknown } | undefined)?.code;
    if (typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'))) {
      throw new TransientBackendError(
        `the SQLite database is locked by another process (${what}): ${errorMessage(error)}`,
        { cause: error },
      );
    }
    throw error;
  }
}
