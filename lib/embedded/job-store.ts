/**
 * Job records (see lib/runtime/job-control.ts) in the embedded SQLite file: table floe_job, and
 * floe_job_freed for what a removed record leaves (FreedJob), created beside it in files of an
 * earlier floe (which ignores it: its restores write nothing after an abandon, see
 * sqliteStateScope, so it has nothing to be fenced from).
 */
import { StateFormatError } from '../core/errors.ts';
import type { JobLookup, JobRecord, JobStore } from '../runtime/job-control.ts';
import { ensureSchema } from './schema.ts';
import type { SqliteDatabase } from './sqlite.ts';

export const SQLITE_JOB_SCHEMA_VERSION = 1;

const DDL = `
CREATE TABLE IF NOT EXISTS floe_job (
  job TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floe_job_freed (
  job TEXT PRIMARY KEY, version INTEGER NOT NULL, next_generation INTEGER NOT NULL
) WITHOUT ROWID;
`;

export class SqliteJobStore implements JobStore {
  private readonly sql;

  constructor(readonly db: SqliteDatabase) {
    ensureSchema(db, 'jobs', SQLITE_JOB_SCHEMA_VERSION, DDL);
    this.sql = {
      get: db.prepare<[string], { body: string }>('SELECT body FROM floe_job WHERE job = ?'),
      insert: db.prepare('INSERT OR IGNORE INTO floe_job (job, version, body) VALUES (?, ?, ?)'),
      update: db.prepare('UPDATE floe_job SET version = ?, body = ? WHERE job = ? AND version = ?'),
      delete: db.prepare('DELETE FROM floe_job WHERE job = ? AND version = ?'),
      list: db.prepare<[], { body: string }>('SELECT body FROM floe_job ORDER BY job'),
      freed: db.prepare<[string], { version: number; next_generation: number }>(
        'SELECT version, next_generation FROM floe_job_freed WHERE job = ?',
      ),
      free: db.prepare(
        'INSERT OR REPLACE INTO floe_job_freed (job, version, next_generation) VALUES (?, ?, ?)',
      ),
      unfree: db.prepare('DELETE FROM floe_job_freed WHERE job = ?'),
    };
  }

  async get(job: string): Promise<JobRecord | undefined> {
    return this.read(job);
  }

  /** The record as it is now, synchronously: inside a SQLite transaction that depends on it. */
  read(job: string): JobRecord | undefined {
    const row = this.sql.get.get(job);
    return row === undefined ? undefined : parse(row.body, job);
  }

  async lookup(job: string): Promise<JobLookup> {
    return this.db
      .transaction((): JobLookup => {
        const record = this.read(job);
        // (A record an earlier floe wrote over a removed one leaves its row: the record wins.)
        const row = record === undefined ? this.sql.freed.get(job) : undefined;
        const freed =
          row === undefined ? undefined : { job, nextGeneration: row.next_generation, version: row.version };
        return { record, freed };
      })
      .deferred();
  }

  async put(record: JobRecord, expectedVersion: number | undefined): Promise<boolean> {
    const body = JSON.stringify(record);
    return this.db
      .transaction((): boolean => {
        if (this.read(record.job) !== undefined) {
          if (expectedVersion === undefined) return false;
          return this.sql.update.run(record.version, body, record.job, expectedVersion).changes === 1;
        }
        // No record: over nothing, or over what a removed one left (its version).
        if (this.sql.freed.get(record.job)?.version !== expectedVersion) return false;
        this.sql.unfree.run(record.job);
        return this.sql.insert.run(record.job, record.version, body).changes === 1;
      })
      .immediate();
  }

  async delete(record: JobRecord): Promise<boolean> {
    return this.db
      .transaction((): boolean => {
        if (this.sql.delete.run(record.job, record.version).changes !== 1) return false;
        this.sql.free.run(record.job, record.version + 1, record.nextGeneration);
        return true;
      })
      .immediate();
  }

  async list(): Promise<JobRecord[]> {
    return this.sql.list.all().map((row) => parse(row.body, '?'));
  }

  /** A read of the whole floe_job table: one row per job. */
  async restoresFrom(savepointId: string): Promise<JobRecord[]> {
    return (await this.list()).filter((r) => r.restore?.savepointId === savepointId);
  }
}

function parse(body: string, job: string): JobRecord {
  try {
    return JSON.parse(body) as JobRecord;
  } catch (error) {
    throw new StateFormatError(`the record of job ${job} in floe_job is not valid JSON: ${String(error)}`);
  }
}
