/** Versioned schemas of the components sharing one SQLite file. */
import { StateFormatError } from '../core/errors.ts';
import type { SqliteDatabase } from './sqlite.ts';

/**
 * Creates a component's tables if needed and checks the version recorded in the file, so a
 * file written by an incompatible floe is refused instead of misread.
 */
export function ensureSchema(db: SqliteDatabase, component: string, version: number, ddl: string): void {
  db.transaction(() => {
    db.exec('CREATE TABLE IF NOT EXISTS floe_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)');
    const row = db.prepare('SELECT version FROM floe_schema WHERE component = ?').get(component) as
      | { version: number }
      | undefined;
    if (row !== undefined && row.version !== version) {
      throw new StateFormatError(
        `the SQLite file has ${component} schema version ${row.version}; this floe uses version ${version}. Use a new file, or export a savepoint with the floe that wrote it and restore it here.`,
      );
    }
    db.exec(ddl);
    if (row === undefined) {
      db.prepare('INSERT INTO floe_schema (component, version) VALUES (?, ?)').run(component, version);
    }
  }).immediate();
}
