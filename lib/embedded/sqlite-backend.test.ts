import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { describeBackendContract } from '../core/testing/backend-contract.ts';
import { SqliteBackend } from './sqlite-backend.ts';

const dir = mkdtempSync(join(tmpdir(), 'floe-sqlite-contract-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

describeBackendContract('sqlite', async () => {
  const path = join(dir, `backend-${++n}.db`);
  const open = () => SqliteBackend.open(path, { job: 'contract', generation: 1 });
  let current = open();
  return {
    store: current,
    async reopen() {
      await current.close();
      current = open();
      return current;
    },
    async close() {
      await current.close();
    },
  };
});
