/** The runtime's exactly-once suite over the embedded backend: SQLite state + the local log. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { describeExactlyOnce } from '../runtime/testing/exactly-once.ts';
import { LocalLog } from './local-log.ts';
import { SqliteBackend } from './sqlite-backend.ts';

const dir = mkdtempSync(join(tmpdir(), 'floe-sqlite-eo-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

describeExactlyOnce('sqlite', async ({ shards }) => {
  const path = join(dir, `eo-${++n}.db`);
  // The harness writes records with fixed arrival times in the past: keep them forever.
  const log = LocalLog.open(path);
  await log.createStream('events', { shards, retentionMs: Number.POSITIVE_INFINITY });
  const source = log.source('events');
  const open = () => SqliteBackend.open(path, { job: 'eo' });
  let current = open();
  return {
    backend: current,
    async reopen() {
      await current.close();
      current = open();
      return current;
    },
    stream: {
      source,
      put: (partitionKey, data, arrivalTime) => log.append('events', [{ partitionKey, data, arrivalTime }]),
      split: (shardId) => log.splitShard('events', shardId),
      merge: (a, b) => log.mergeShards('events', a, b),
    },
    async close() {
      await current.close();
      await log.close();
    },
  };
});
