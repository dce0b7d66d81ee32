/** runJob over the embedded backend (SQLite state and the local log), as `floe run` drives it. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import { compile } from '../core/index.ts';
import { clickstream } from '../runtime/clickstream.ts';
import { runJob } from '../runtime/local-runner.ts';
import { databasePath, openEmbeddedJob } from './job.ts';
import { LocalLog } from './local-log.ts';

const dir = mkdtempSync(join(tmpdir(), 'floe-run-job-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('runJob on the embedded backend', () => {
  it('lets timers and signals run during a catch-up: an abort (Ctrl-C) stops it before the backlog ends', async () => {
    const events = 20_000;
    const log = LocalLog.open(databasePath(dir));
    await log.createStream('page-views', { shards: 1, retentionMs: Number.POSITIVE_INFINITY });
    const records = [...clickstream({ events, pages: 20, users: 100, seed: 5 })].map((view) => ({
      partitionKey: view.page,
      data: JSON.stringify(view),
      arrivalTime: view.ts,
    }));
    await log.append('page-views', records);
    await log.close();
    const job = await openEmbeddedJob({
      dataDir: dir,
      stream: 'page-views',
      job: 'pv',
      plan: compile(pageViews),
    });
    try {
      // `floe run` stops on SIGINT through an AbortController, and renders its progress on a
      // timer: both are event-loop callbacks, which a catch-up must leave room for.
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), 1);
      const summary = await runJob(job.runtime, {
        untilIdle: true,
        batchSize: 10,
        idlePollMs: 1,
        roundPauseMs: 1,
        signal: controller.signal,
      });
      clearTimeout(timer);
      expect(controller.signal.aborted).toBe(true);
      expect(summary.records).toBeLessThan(events / 2);
    } finally {
      await job.close();
    }
  });
});
