/** Job records (see lib/runtime/job-control.ts) in the embedded SQLite file: table floe_job. */
import { StateFormatError } from '../core/errors.ts';
import type { JobRecord, JobStore } from '../runtime/job-control.ts';
import { ensureSchema } from './schema.ts';
import type { SqliteDatabase } from './sqlite.ts';

export const SQLITE_JOB_SCHEMA_VERSION = 1;

const DDL = `
CREATE TABLE IF NOT EXISTS floe_job (
  job TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL
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

  async put(record: JobRecord, expectedVersion: number | undefined): Promise<boolean> {
    const body = JSON.stringify(record);
    const result =
      expectedVersion === undefined
        ? this.sql.insert.run(record.job, record.version, body)
        : this.sql.update.run(record.version, body, record.job, expectedVersion);
    return result.changes === 1;
  }

  async delete(job: string, expectedVersion: number): Promise<boolean> {
    return this.sql.delete.run(job, expectedVersion).changes === 1;
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
