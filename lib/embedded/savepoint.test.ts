/**
 * Savepoints and replay on the embedded backend (SQLite + local log + a savepoint directory),
 * in process: the acceptance scenarios of the savepoint issue.
 */
import { readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import {
  ConfigurationError,
  compile,
  deserializeCheckpoint,
  MANIFEST_FILE,
  type Output,
  type SavepointManifest,
  StateFormatError,
  type StateMigration,
} from '../core/index.ts';
import { runJob } from '../runtime/local-runner.ts';
import {
  createSavepoint,
  deleteSavepoint,
  IncompatibleStateError,
  listSavepoints,
  prepareTimestampReplay,
  restoreSavepoint,
  type SavepointBackend,
  SavepointTrimmedError,
  SimulatedCrash,
} from '../runtime/savepoints.ts';
import { pausePoint } from '../runtime/testing/pause-point.ts';
import { SqliteJobStore } from './job-store.ts';
import { openEmbeddedJobForRun } from './run-job.ts';
import {
  backendOf,
  countRows,
  type DataDir,
  dataDir,
  outputsOf,
  produce,
  runUntilIdle,
  STREAM,
  tmpRoot,
  valuesByShard,
} from './testing/savepoint-harness.ts';
import { type Click, clicksPipeline, generateClicks, WINDOW_MS } from './testing/savepoint-pipelines.ts';

const ROOT = tmpRoot();
afterAll(() => rmSync(ROOT, { recursive: true, force: true }));

const CLICKS = generateClicks(4000);
const FIRST = CLICKS.slice(0, 2000);
const SECOND = CLICKS.slice(2000);
const v1 = clicksPipeline('v1');
const v2 = clicksPipeline('v2');

/** The commit number of each shard at the savepoint (outputs after it were emitted after the cut). */
function cut(manifest: SavepointManifest): Map<string, number> {
  return new Map(
    manifest.shards.map((s) => {
      const cp = deserializeCheckpoint(JSON.stringify(s.checkpoint));
      return [cp.shardId, cp.commitNumber];
    }),
  );
}

/** The window counts of the clicks: the ground truth of a correct pipeline. */
function truth(clicks: readonly Click[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const c of clicks) {
    const key = `${c.user}@${Math.floor(c.ts / WINDOW_MS) * WINDOW_MS}`;
    out.set(key, (out.get(key) ?? 0) + 1);
  }
  return out;
}

function windowCounts(data: DataDir, job: string): Array<{ key: string; clicks: number }> {
  return outputsOf(data.db, job)
    .filter((o) => o.sink === 'counts')
    .map((o) => ({ key: `${o.value.user}@${o.value.start}`, clicks: o.value.clicks as number }));
}

async function nothingRestored(data: DataDir, job: string): Promise<void> {
  expect(await new SqliteJobStore(data.db).get(job)).toBeUndefined();
  expect(countRows(data.db, 'SELECT count(*) AS n FROM floe_state WHERE job = ?', job)).toBe(0);
  expect(countRows(data.db, 'SELECT count(*) AS n FROM floe_checkpoint WHERE job = ?', job)).toBe(0);
}

/**
 * Job `job` (and `<job>-ref` beside it, on the same records) runs, is stopped with a savepoint,
 * and `startStalled` restores it, stalling at `pause`. Meanwhile the operator reruns the replay,
 * which completes, and the job runs on in the new generation. Then the stalled restore goes on:
 * it must fail as superseded and leave the new generation's state equal to the reference job's.
 */
async function expectStalledRestoreChangesNothing(
  job: string,
  startStalled: (
    backend: SavepointBackend,
    savepointId: string,
    pause: ReturnType<typeof pausePoint>,
  ) => Promise<unknown>,
): Promise<void> {
  const data = await dataDir(ROOT);
  const backend = backendOf(data);
  await produce(data.log, FIRST);
  await Promise.all([runUntilIdle(data, job, v1), runUntilIdle(data, `${job}-ref`, v1)]);
  const manifest = await createSavepoint(backend, { job, stop: true, chunkEntries: 3 });
  const pause = pausePoint();
  const first = startStalled(backend, manifest.id, pause);
  await pause.reached;
  await restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1) });
  await produce(data.log, SECOND);
  await Promise.all([runUntilIdle(data, job, v1), runUntilIdle(data, `${job}-ref`, v1)]);
  pause.release();
  const error = await first.catch((e: Error) => e);
  const state = (id: string, generation: number) =>
    data.db
      .prepare('SELECT address, value FROM floe_state WHERE job = ? AND generation = ? ORDER BY address')
      .all(id, generation);
  expect(state(job, 1)).toEqual(state(`${job}-ref`, 0));
  expect(String(error)).toMatch(/was completed or superseded by another replay/);
  data.close();
}

describe('savepoints on the embedded backend', () => {
  it('takes a savepoint while the job runs; a replay into a new job id reproduces the rest of the run exactly', async () => {
    const data = await dataDir(ROOT);
    await produce(data.log, CLICKS);
    const backend = backendOf(data);
    // Reference: one uninterrupted run.
    await runUntilIdle(data, 'ref', v1);
    // Job A runs slowly; the savepoint is taken while it processes (it pauses, then resumes).
    // A 2-op timer tail: A's timers are in timer chunks, which the savepoint puts inline.
    const running = runUntilIdle(data, 'a', v1, { batchSize: 25, readDelayMs: 5, timerTailOps: 2 });
    while (outputsOf(data.db, 'a').length < 100) await new Promise((r) => setTimeout(r, 20));
    const phases: string[] = [];
    const manifest = await createSavepoint(backend, {
      job: 'a',
      chunkEntries: 7,
      onProgress: (p) => {
        if (!phases.includes(p.phase)) phases.push(p.phase);
      },
    });
    await running;
    expect(phases).toContain('export');
    expect(manifest.files.length).toBeGreaterThan(1);
    expect(manifest.entries).toBeGreaterThan(0);
    const positions = manifest.shards.map((s) => deserializeCheckpoint(JSON.stringify(s.checkpoint)));
    expect(positions).toHaveLength(3);
    // The cut is in the middle of the input: some records before, some after.
    const processedAtCut = positions.reduce((n, cp) => n + Number(cp.position !== undefined), 0);
    expect(processedAtCut).toBeGreaterThan(0);
    expect(positions.some((cp) => cp.timers.length > 0)).toBe(true);
    expect((await new SqliteJobStore(data.db).get('a'))?.state).toBe('running');

    const r1 = outputsOf(data.db, 'a');
    // Exactly once across the pause: A equals the uninterrupted run.
    expect(valuesByShard(r1)).toEqual(valuesByShard(outputsOf(data.db, 'ref')));
    const afterCut = valuesByShard(r1, cut(manifest));
    expect(Object.values(afterCut).flat().length).toBeGreaterThan(0);

    const restored = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: compile(v1),
      asJob: 'b',
    });
    expect(restored).toMatchObject({ job: 'b', generation: 0, entries: manifest.entries, shards: 3 });
    await runUntilIdle(data, 'b', v1);
    // B's sinks hold exactly what A emitted after the savepoint, shard by shard, in order.
    expect(valuesByShard(outputsOf(data.db, 'b'))).toEqual(afterCut);
    data.close();
  });

  it('keeps its hold while the export reads nothing for longer than the lease TTL (a sparse scan of a shared table)', async () => {
    const data = await dataDir(ROOT);
    const base = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, 'sparse', v1);
    const controller = new AbortController();
    const running = runUntilIdle(data, 'sparse', v1, { untilIdle: false, signal: controller.signal });
    const scope = base.scope.bind(base);
    const backend: typeof base = {
      ...base,
      scope: (job, generation) => {
        const inner = scope(job, generation);
        return {
          ...inner,
          async *entries() {
            let waited = false;
            for await (const entry of inner.entries()) {
              if (!waited) {
                // Records keep arriving while the scan goes through pages of other jobs' items.
                await produce(data.log, SECOND.slice(0, 500));
                await new Promise((resolve) => setTimeout(resolve, 2000));
                waited = true;
              }
              yield entry;
            }
          },
        };
      },
    };
    const manifest = await createSavepoint(backend, { job: 'sparse', leaseTtlMs: 600 });
    controller.abort();
    await running;
    // Consistent: a copy from the savepoint emits exactly what the job emitted after the cut.
    await runUntilIdle(data, 'sparse', v1);
    await restoreSavepoint(base, { savepointId: manifest.id, plan: compile(v1), asJob: 'sparse-b' });
    await runUntilIdle(data, 'sparse-b', v1);
    const afterCut = valuesByShard(outputsOf(data.db, 'sparse'), cut(manifest));
    expect(Object.values(afterCut).flat().length).toBeGreaterThan(0);
    expect(valuesByShard(outputsOf(data.db, 'sparse-b'))).toEqual(afterCut);
    data.close();
  });

  it('a changed pipeline (a fixed aggregation) replayed as a new job beside the original: both exact', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, 'orig', v1);
    const manifest = await createSavepoint(backend, { job: 'orig' });
    await produce(data.log, SECOND);
    const restored = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: compile(v2),
      asJob: 'fixed',
    });
    expect(restored.warnings).toEqual([]);
    // Both run at the same time, on the same stream.
    await Promise.all([runUntilIdle(data, 'orig', v1), runUntilIdle(data, 'fixed', v2)]);

    const expected = truth(CLICKS);
    const orig = windowCounts(data, 'orig');
    const fixed = windowCounts(data, 'fixed');
    expect(orig.length).toBeGreaterThan(100);
    // v1 reports every window with its bug (+1), each window once.
    for (const w of orig) expect(w.clicks).toBe((expected.get(w.key) ?? 0) + 1);
    expect(new Set(orig.map((w) => w.key)).size).toBe(orig.length);
    // v2 reports exactly the windows fired after the savepoint, with correct counts.
    expect(fixed.length).toBeGreaterThan(0);
    for (const w of fixed) expect(w.clicks).toBe(expected.get(w.key));
    const after = valuesByShard(outputsOf(data.db, 'orig'), cut(manifest));
    const afterKeys = Object.values(after)
      .flat()
      .filter((o) => o.sink === 'counts')
      .map((o) => {
        const v = o.value as { user: string; start: number };
        return `${v.user}@${v.start}`;
      });
    expect(fixed.map((w) => w.key).sort()).toEqual(afterKeys.sort());
    // The process function (unchanged) continues with its restored state and timers.
    const bursts = (job: string) =>
      Object.values(valuesByShard(outputsOf(data.db, job), job === 'orig' ? cut(manifest) : undefined))
        .flat()
        .filter((o) => o.sink === 'bursts');
    expect(bursts('fixed')).toEqual(bursts('orig'));
    expect(bursts('fixed').length).toBeGreaterThan(0);
    data.close();
  });

  it('stop-with-savepoint, then a replay into the same job, gives the results of an uninterrupted run', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    // A live runner (not until idle): the stop ends it.
    const controller = new AbortController();
    const running = runUntilIdle(data, 'stop', v1, { untilIdle: false, signal: controller.signal });
    const checkpoints = (): number => {
      try {
        return countRows(data.db, "SELECT count(*) AS n FROM floe_checkpoint WHERE job = 'stop'");
      } catch {
        return 0; // the runner has not created its tables yet
      }
    };
    while (checkpoints() < 3) await new Promise((r) => setTimeout(r, 20));
    const manifest = await createSavepoint(backend, { job: 'stop', stop: true });
    const ended = await Promise.race([running, new Promise((r) => setTimeout(() => r('timeout'), 10_000))]);
    controller.abort();
    expect(ended).toMatchObject({ stopped: expect.stringMatching(/stopped with savepoint/) });
    expect(manifest.stopped).toBe(true);
    const record = await new SqliteJobStore(data.db).get('stop');
    expect(record).toMatchObject({ state: 'stopped', stoppedBy: { savepointId: manifest.id } });
    // floe run refuses a stopped job, saying how to resume it.
    await expect(
      openEmbeddedJobForRun({ dataDir: data.dir, stream: STREAM, job: 'stop', plan: compile(v1) }),
    ).rejects.toThrow(/was stopped with savepoint .*floe replay --from-savepoint/);

    await produce(data.log, SECOND);
    const restored = await restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1) });
    expect(restored).toMatchObject({ job: 'stop', generation: 1 });
    expect(await new SqliteJobStore(data.db).get('stop')).toMatchObject({
      state: 'running',
      generation: 1,
      restoredFrom: { savepointId: manifest.id },
    });
    await runUntilIdle(data, 'stop', v1);
    await runUntilIdle(data, 'ref', v1);
    const all = outputsOf(data.db, 'stop');
    expect(new Set(all.map((o) => o.job))).toEqual(new Set(['stop', 'stop@1']));
    expect(valuesByShard(all)).toEqual(valuesByShard(outputsOf(data.db, 'ref')));
    data.close();
  });

  it('outputs committed but not delivered at a stop-with-savepoint are delivered by the replay into the same job, not copied into another job', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, 'undelivered', v1);
    await produce(data.log, SECOND);
    // The job's worker commits the second half, then dies before its sink delivers anything.
    const opened = await openEmbeddedJobForRun({
      dataDir: data.dir,
      stream: STREAM,
      job: 'undelivered',
      plan: compile(v1),
    });
    let undelivered: readonly Output[] = [];
    try {
      const crashing = {
        ...opened.runtime,
        sink: {
          async publish(outputs: readonly Output[]): Promise<void> {
            undelivered = outputs;
            throw new Error('the worker died before its sink delivered anything');
          },
        },
      };
      await expect(
        runJob(crashing, { untilIdle: true, batchSize: 5000, leaseTtlMs: 1, roundPauseMs: 5 }),
      ).rejects.toThrow('died before');
    } finally {
      await opened.close();
    }
    expect(undelivered.length).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 10)); // the dead worker's 1 ms lease expires

    const manifest = await createSavepoint(backend, { job: 'undelivered', stop: true });
    expect(manifest.shards.some((s) => s.outbox !== undefined)).toBe(true);
    // Into another job: the outputs are the original job's, so they stay out, with a warning.
    const copy = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: compile(v1),
      asJob: 'undelivered-copy',
    });
    expect(copy.warnings.join('\n')).toMatch(
      /not delivered at the savepoint were not copied into job undelivered-copy/,
    );
    await runUntilIdle(data, 'undelivered-copy', v1);
    expect(
      outputsOf(data.db, 'undelivered-copy').filter((o) => !o.id.startsWith('undelivered-copy/')),
    ).toEqual([]);
    // Into the same job: its next workers deliver them, ids unchanged, and the job's whole
    // output equals an uninterrupted run's.
    await restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1) });
    await runUntilIdle(data, 'undelivered', v1);
    await runUntilIdle(data, 'ref', v1);
    const all = outputsOf(data.db, 'undelivered');
    const delivered = new Set(all.map((o) => o.id));
    expect(undelivered.filter((o) => !delivered.has(o.id))).toEqual([]);
    expect(valuesByShard(all)).toEqual(valuesByShard(outputsOf(data.db, 'ref')));
    data.close();
  });

  it('a savepoint of large state entries splits its files by size, not only by entry count', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST.slice(0, 100));
    await runUntilIdle(data, 'large', v1);
    // 30,000 entries of 20 KB (e.g. list state): at 50,000 entries per file, one file's text
    // would be 600 MB, beyond the longest string V8 can build.
    const value = JSON.stringify({ k: 'u', s: { n: ['x'.repeat(20_000)] } });
    const scope = backend.scope.bind(backend);
    const large = {
      ...backend,
      scope: (job: string, generation: number) => ({
        ...scope(job, generation),
        async *entries() {
          for (let i = 0; i < 30_000; i++) yield [`bursts/"u${i}"`, value.replace('"u"', `"u${i}"`)] as const;
        },
        countEntries: async () => 30_000,
      }),
    };
    const manifest = await createSavepoint(large, { job: 'large' });
    expect(manifest.entries).toBe(30_000);
    expect(manifest.files.length).toBeGreaterThan(8);
    data.close();
  }, 120_000);

  it('a crash during the export is safe: a rerun completes a consistent savepoint (same id)', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, 'crash', v1);
    const crash = (at: number) => (step: string, index?: number) => {
      if (step === 'file-written' && index === at) throw new SimulatedCrash('crash');
    };
    await expect(
      createSavepoint(backend, { job: 'crash', chunkEntries: 5, leaseTtlMs: 300, onStep: crash(1) }),
    ).rejects.toBeInstanceOf(SimulatedCrash);
    const interrupted = (await new SqliteJobStore(data.db).get('crash'))!;
    expect(interrupted.state).toBe('pausing');
    const id = interrupted.savepoint!.id;
    expect(await listSavepoints(backend.snapshots)).toEqual([{ id, status: 'incomplete' }]);
    await expect(
      restoreSavepoint(backend, { savepointId: id, plan: compile(v1), asJob: 'x' }),
    ).rejects.toThrow(/is incomplete: it has no manifest.json/);
    // Once the crashed savepoint's hold expires, the job runs again by itself.
    await new Promise((r) => setTimeout(r, 400));
    await produce(data.log, SECOND.slice(0, 300));
    await runUntilIdle(data, 'crash', v1);
    // The rerun reuses the id and writes a complete savepoint.
    const manifest = await createSavepoint(backend, { job: 'crash', chunkEntries: 5 });
    expect(manifest.id).toBe(id);
    expect((await listSavepoints(backend.snapshots)).map((s) => s.status)).toEqual(['complete']);
    await produce(data.log, SECOND.slice(300));
    await restoreSavepoint(backend, { savepointId: id, plan: compile(v1), asJob: 'crash-copy' });
    await Promise.all([runUntilIdle(data, 'crash', v1), runUntilIdle(data, 'crash-copy', v1)]);
    expect(valuesByShard(outputsOf(data.db, 'crash-copy'))).toEqual(
      valuesByShard(outputsOf(data.db, 'crash'), cut(manifest)),
    );
    data.close();
  });

  it('a stop-with-savepoint crashed after its manifest: a rerun stops the job at the cut, or refuses once the job ran past it', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await Promise.all([runUntilIdle(data, 'sc', v1), runUntilIdle(data, 'sc-ref', v1)]);
    const crashAfterManifest = (step: string) => {
      if (step === 'manifest-written') throw new SimulatedCrash('crash');
    };
    const stop = { job: 'sc', stop: true, leaseTtlMs: 300, onStep: crashAfterManifest };
    // Rerun once the hold expired, with the job still at the cut: the rerun completes the stop.
    await expect(createSavepoint(backend, stop)).rejects.toBeInstanceOf(SimulatedCrash);
    await new Promise((resolve) => setTimeout(resolve, 400));
    const first = await createSavepoint(backend, { job: 'sc', stop: true });
    expect((await new SqliteJobStore(data.db).get('sc'))?.stoppedBy?.savepointId).toBe(first.id);
    await restoreSavepoint(backend, { savepointId: first.id, plan: compile(v1) });

    // Rerun after the hold expired and the job ran on: stopping it with that savepoint would
    // make a replay emit the later commits' outputs a second time.
    await expect(createSavepoint(backend, stop)).rejects.toBeInstanceOf(SimulatedCrash);
    await new Promise((resolve) => setTimeout(resolve, 400));
    await produce(data.log, SECOND.slice(0, 1000));
    await Promise.all([runUntilIdle(data, 'sc', v1), runUntilIdle(data, 'sc-ref', v1)]);
    await expect(createSavepoint(backend, { job: 'sc', stop: true })).rejects.toThrow(
      /is complete, but the job ran on after it .*The job was not stopped/,
    );
    const record = await new SqliteJobStore(data.db).get('sc');
    expect(record).toMatchObject({ state: 'running' });
    expect(record?.savepoint).toBeUndefined();
    // A new stop-with-savepoint and its replay equal an uninterrupted run.
    const second = await createSavepoint(backend, { job: 'sc', stop: true });
    await restoreSavepoint(backend, { savepointId: second.id, plan: compile(v1) });
    await produce(data.log, SECOND.slice(1000));
    await Promise.all([runUntilIdle(data, 'sc', v1), runUntilIdle(data, 'sc-ref', v1)]);
    const values = (job: string) =>
      outputsOf(data.db, job)
        .map((o) => JSON.stringify([o.sink, o.value]))
        .sort();
    expect(values('sc')).toEqual(values('sc-ref'));
    data.close();
  });

  it('a stop-with-savepoint that stalls past its hold after the manifest does not stop the job that ran on', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await Promise.all([runUntilIdle(data, 'sl', v1), runUntilIdle(data, 'sl-ref', v1)]);
    const controller = new AbortController();
    const running = runUntilIdle(data, 'sl', v1, { untilIdle: false, signal: controller.signal });
    const stalled = createSavepoint(backend, {
      job: 'sl',
      stop: true,
      leaseTtlMs: 600,
      onStep: async (step) => {
        if (step !== 'manifest-written') return;
        // New records arrive while the savepoint stalls (a GC pause, a suspended VM) past its hold:
        // it stalls until the job has run on, i.e. a worker took the expired hold's leases and
        // committed past the cut (however long that takes on a loaded machine).
        const commits = () =>
          countRows(data.db, "SELECT sum(commit_number) AS n FROM floe_checkpoint WHERE job = 'sl'");
        const atCut = commits();
        await produce(data.log, SECOND.slice(0, 1000));
        while (commits() === atCut) await new Promise((resolve) => setTimeout(resolve, 20));
      },
    });
    await expect(stalled).rejects.toThrow(
      /is complete, but the job ran on after it .*The job was not stopped/,
    );
    controller.abort();
    expect((await running).stopped).toBeUndefined();
    expect(await new SqliteJobStore(data.db).get('sl')).toMatchObject({ state: 'running' });
    // A new stop-with-savepoint and its replay equal an uninterrupted run.
    const manifest = await createSavepoint(backend, { job: 'sl', stop: true });
    await restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1) });
    await produce(data.log, SECOND.slice(1000));
    await Promise.all([runUntilIdle(data, 'sl', v1), runUntilIdle(data, 'sl-ref', v1)]);
    const values = (job: string) =>
      outputsOf(data.db, job)
        .map((o) => JSON.stringify([o.sink, o.value]))
        .sort();
    expect(values('sl')).toEqual(values('sl-ref'));
    data.close();
  });

  it('a crash during the restore is safe: a rerun completes it, and nothing runs before it completes', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, CLICKS);
    await runUntilIdle(data, 'r', v1);
    const manifest = await createSavepoint(backend, { job: 'r', chunkEntries: 3 });
    expect(manifest.files.length).toBeGreaterThan(2);
    await expect(
      restoreSavepoint(backend, {
        savepointId: manifest.id,
        plan: compile(v1),
        asJob: 'r2',
        onStep: (step, index) => {
          if (step === 'entries-written' && index === 2) throw new SimulatedCrash('crash');
        },
      }),
    ).rejects.toBeInstanceOf(SimulatedCrash);
    expect(await new SqliteJobStore(data.db).get('r2')).toMatchObject({ state: 'restoring' });
    await expect(
      openEmbeddedJobForRun({ dataDir: data.dir, stream: STREAM, job: 'r2', plan: compile(v1) }),
    ).rejects.toThrow(/being restored .* has not completed; rerun/);
    const done = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: compile(v1),
      asJob: 'r2',
    });
    expect(done.generation).toBe(0);
    expect(countRows(data.db, "SELECT count(*) AS n FROM floe_state WHERE job = 'r2'")).toBe(
      manifest.entries,
    );
    expect(countRows(data.db, "SELECT count(*) AS n FROM floe_state WHERE job = 'r'")).toBe(manifest.entries);
    data.close();
  });

  it('a restore that stalled while its rerun completed and the job ran on writes nothing more', async () => {
    // The first restore stalls (a suspended process) after its first state file.
    await expectStalledRestoreChangesNothing('zr', (backend, savepointId, pause) =>
      restoreSavepoint(backend, {
        savepointId,
        plan: compile(v1),
        onStep: async (step, index) => {
          if (step === 'entries-written' && index === 0) await pause.wait();
        },
      }),
    );
  });

  it('a restore that stalled between its check of the job record and its write writes nothing: the check is in the write transaction', async () => {
    // The first restore passes its check of the job record for its second batch, then stalls
    // before the batch's transaction.
    await expectStalledRestoreChangesNothing('zw', (backend, savepointId, pause) => {
      let batches = 0;
      const stalling: SavepointBackend = {
        ...backend,
        scope(job, generation) {
          const scope = backend.scope(job, generation);
          return {
            ...scope,
            async importEntries(entries, guard) {
              if (++batches === 2) await pause.wait();
              await scope.importEntries(entries, guard);
            },
          };
        },
      };
      return restoreSavepoint(stalling, { savepointId, plan: compile(v1) });
    });
  });

  it("a restore whose switch landed but whose reply was lost completes, not 'superseded'", async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST.slice(0, 500));
    await runUntilIdle(data, 'amb', v1);
    const manifest = await createSavepoint(backend, { job: 'amb', stop: true });
    // DynamoJobStore.put retries a write whose reply was lost; the retry fails its version
    // condition, as if another writer had been first.
    let lost = false;
    const jobs: typeof backend.jobs = {
      get: (job) => backend.jobs.get(job),
      restoresFrom: (id) => backend.jobs.restoresFrom(id),
      lookup: (job) => backend.jobs.lookup(job),
      delete: (record) => backend.jobs.delete(record),
      async put(record, expected) {
        const ok = await backend.jobs.put(record, expected);
        if (!ok || record.restoredFrom === undefined || lost) return ok;
        lost = true;
        return false;
      },
    };
    const result = await restoreSavepoint(
      { ...backend, jobs },
      { savepointId: manifest.id, plan: compile(v1) },
    );
    expect(lost).toBe(true);
    expect(result.generation).toBe(1);
    expect(await backend.jobs.get('amb')).toMatchObject({ generation: 1, state: 'running' });
    data.close();
  });

  it('refuses a corrupted or missing savepoint file and restores nothing', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, 'c', v1);
    const plan = compile(v1);
    const take = () => createSavepoint(backend, { job: 'c', chunkEntries: 3 });
    const path = (id: string, name: string) => join(data.dir, 'savepoints', id, name);

    const flipped = await take();
    expect(flipped.files.length).toBeGreaterThan(2);
    const file = path(flipped.id, flipped.files[1]!.name);
    const bytes = readFileSync(file);
    bytes[bytes.length >> 1]! ^= 0xff;
    writeFileSync(file, bytes);
    await expect(restoreSavepoint(backend, { savepointId: flipped.id, plan, asJob: 'c1' })).rejects.toThrow(
      /state-00001\.ndjson\.gz is corrupted: its sha256 or size does not match the manifest/,
    );
    await nothingRestored(data, 'c1');

    const missing = await take();
    unlinkSync(path(missing.id, missing.files[0]!.name));
    await expect(restoreSavepoint(backend, { savepointId: missing.id, plan, asJob: 'c2' })).rejects.toThrow(
      /state-00000\.ndjson\.gz is missing/,
    );
    await nothingRestored(data, 'c2');

    const edited = await take();
    const manifestPath = path(edited.id, MANIFEST_FILE);
    writeFileSync(manifestPath, readFileSync(manifestPath, 'utf8').replace('"entries": ', '"entries": 1'));
    await expect(restoreSavepoint(backend, { savepointId: edited.id, plan, asJob: 'c3' })).rejects.toThrow(
      /manifest\.json is corrupted: its checksum does not match its content/,
    );
    await nothingRestored(data, 'c3');

    const truncated = await take();
    writeFileSync(path(truncated.id, MANIFEST_FILE), '{"format": 1, "id": ');
    await expect(restoreSavepoint(backend, { savepointId: truncated.id, plan, asJob: 'c4' })).rejects.toThrow(
      StateFormatError,
    );
    await nothingRestored(data, 'c4');

    await expect(
      restoreSavepoint(backend, { savepointId: 'no-such-savepoint', plan, asJob: 'c5' }),
    ).rejects.toThrow(ConfigurationError);
    await nothingRestored(data, 'c5');
    // The original job is untouched and runs on.
    expect((await new SqliteJobStore(data.db).get('c'))?.state).toBe('running');
    data.close();
  });

  it('refuses a replay --as-job into an existing job before it reads the savepoint files', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, 'e', v1);
    await runUntilIdle(data, 'other', v1);
    const plan = compile(v1);
    const savepoint = await createSavepoint(backend, { job: 'e' });
    // A missing file would fail the verification: the target is refused first.
    unlinkSync(join(data.dir, 'savepoints', savepoint.id, savepoint.files[0]!.name));
    await expect(
      restoreSavepoint(backend, { savepointId: savepoint.id, plan, asJob: 'other' }),
    ).rejects.toThrow(/job other already exists \(generation 0\); choose a new --as-job id/);
    expect(await new SqliteJobStore(data.db).get('other')).toMatchObject({ state: 'running', generation: 0 });
    data.close();
  });

  it('savepoints of a job taken in the same second whose random id suffixes are equal get distinct ids', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST.slice(0, 500));
    await runUntilIdle(data, 'same-second', v1);
    // The id is <job>-<UTC second>-<4 random hex digits>: equal for both here (1 in 65,536 in a run).
    const now = () => 1_767_261_600_000;
    const random = vi.spyOn(Math, 'random').mockReturnValue(0.25);
    try {
      const first = await createSavepoint(backend, { job: 'same-second', now });
      const second = await createSavepoint(backend, { job: 'same-second', now });
      expect(first.id).toBe('same-second-20260101T100000Z-4000');
      expect(second.id).toBe('same-second-20260101T100000Z-4001');
    } finally {
      random.mockRestore();
    }
    expect((await listSavepoints(backend.snapshots)).map((s) => s.status)).toEqual(['complete', 'complete']);
    data.close();
  });

  it('refuses an incompatible state schema unless a migration is supplied', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, 'm', v1);
    const manifest = await createSavepoint(backend, { job: 'm' });
    const sessions = compile(clicksPipeline('session'));
    const refused = restoreSavepoint(backend, { savepointId: manifest.id, plan: sessions, asJob: 'm1' });
    await expect(refused).rejects.toBeInstanceOf(IncompatibleStateError);
    await expect(refused).rejects.toThrow(
      /window operator "counts" changed from tumbling to session windows, which keep state in another layout/,
    );
    await nothingRestored(data, 'm1');

    // A removed operator: refused, or its state dropped on request.
    const noBursts = compile(clicksPipeline('no-bursts'));
    await expect(
      restoreSavepoint(backend, { savepointId: manifest.id, plan: noBursts, asJob: 'm2' }),
    ).rejects.toThrow(
      /operator "bursts" has state in the savepoint but pipeline "sp-clicks" has no operator with that uid.*--allow-non-restored-state/s,
    );
    await nothingRestored(data, 'm2');
    const dropped = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: noBursts,
      asJob: 'm2',
      allowNonRestoredState: true,
    });
    expect(dropped.warnings.join()).toMatch(/"bursts".*dropped/);
    expect(
      countRows(data.db, "SELECT count(*) AS n FROM floe_state WHERE job = 'm2' AND address LIKE 'bursts/%'"),
    ).toBe(0);
    await runUntilIdle(data, 'm2', clicksPipeline('no-bursts'));

    // A migration turns each open tumbling window into a session of the same extent.
    const migration: StateMigration = {
      state(entry) {
        if (entry.operator !== 'counts') return entry;
        const windows = entry.state.w as Array<[number, number]>;
        return { ...entry, state: { w: windows.map(([start, n]) => [start, [start + WINDOW_MS, n]]) } };
      },
    };
    const migrated = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: sessions,
      asJob: 'm3',
      migration,
    });
    expect(migrated.warnings.join()).toMatch(/tumbling to session/);
    const row = data.db
      .prepare("SELECT value FROM floe_state WHERE job = 'm3' AND address LIKE 'counts/%' LIMIT 1")
      .get() as { value: string };
    const [start, [end]] = (JSON.parse(row.value) as { s: { w: Array<[number, [number, number]]> } }).s.w[0]!;
    expect(end - start).toBe(WINDOW_MS);
    await produce(data.log, SECOND);
    await runUntilIdle(data, 'm3', clicksPipeline('session'));
    expect(outputsOf(data.db, 'm3').some((o) => o.sink === 'counts')).toBe(true);
    data.close();
  });

  it('a migration that moves an operator to another uid is warned to move its timers too', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    // Cut where the active users change: their bursts are pending, and only timers end them.
    await produce(data.log, CLICKS.slice(0, 2100));
    await Promise.all([runUntilIdle(data, 'mv', v1), runUntilIdle(data, 'mv-ref', v1)]);
    const manifest = await createSavepoint(backend, { job: 'mv', stop: true });
    const plan = compile(clicksPipeline('renamed'));
    const move = (e: { operator: string }) => (e.operator === 'bursts' ? { ...e, operator: 'bursts-v2' } : e);
    const stateOnly = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan,
      asJob: 'mv-state-only',
      migration: { state: (e) => move(e) as typeof e },
    });
    expect(stateOnly.warnings.join('\n')).toMatch(
      /\d+ pending timer\(s\) of operator "bursts" were dropped.*move its timers too/,
    );
    // Moving the timers as the warning says gives the results of an uninterrupted run.
    const moved = await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan,
      migration: { state: (e) => move(e) as typeof e, timer: (t) => move(t) as typeof t },
    });
    expect(moved.warnings.join('\n')).not.toMatch(/pending timer/);
    await produce(data.log, CLICKS.slice(2100));
    await Promise.all([
      runUntilIdle(data, 'mv', clicksPipeline('renamed')),
      runUntilIdle(data, 'mv-ref', v1),
    ]);
    const values = (job: string) =>
      outputsOf(data.db, job)
        .map((o) => JSON.stringify([o.sink, o.value]))
        .sort();
    expect(values('mv')).toEqual(values('mv-ref'));
    data.close();
  });

  it('refuses, restoring nothing, when records after the savepoint were trimmed by retention', async () => {
    let now = 1_767_261_600_000;
    const data = await dataDir(ROOT, { retentionMs: 3_600_000, clock: () => now });
    const backend = backendOf(data, { clock: () => now });
    await produce(data.log, FIRST, now);
    await runUntilIdle(data, 't', v1, { clock: () => now });
    const manifest = await createSavepoint(backend, { job: 't', now: () => now });
    await produce(data.log, SECOND.slice(0, 1000), now + 5_000);
    // The savepoint's shards resume fine while the records are there.
    await restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: compile(v1),
      asJob: 'fine',
      now: () => now,
    });
    // Two hours later, everything the savepoint did not process yet has expired.
    now += 2 * 3_600_000;
    await produce(data.log, SECOND.slice(1000), now);
    const refused = restoreSavepoint(backend, {
      savepointId: manifest.id,
      plan: compile(v1),
      asJob: 't2',
      now: () => now,
    });
    await expect(refused).rejects.toBeInstanceOf(SavepointTrimmedError);
    await expect(refused).rejects.toThrow(
      /records of shard shardId-\d+ after position \d+ were trimmed by the retention of stream "clicks".*Nothing was restored/,
    );
    await nothingRestored(data, 't2');
    data.close();
  });

  it('replays a new job from a timestamp (AT_TIMESTAMP) with empty state', async () => {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    const arrival0 = 1_767_261_600_000;
    await produce(data.log, CLICKS, arrival0);
    const from = arrival0 + 2500;
    const record = await prepareTimestampReplay(backend, {
      job: 'ts',
      stream: STREAM,
      timestamp: from,
      plan: compile(v1),
    });
    expect(record).toMatchObject({ generation: 0, startPosition: { type: 'AT_TIMESTAMP', timestamp: from } });
    const { records } = await runUntilIdle(data, 'ts', v1);
    expect(records).toBe(CLICKS.length - 2500);
    // The same job again from a later time: a new generation, the old one kept.
    const again = await prepareTimestampReplay(backend, {
      job: 'ts',
      stream: STREAM,
      timestamp: from + 1000,
      plan: compile(v1),
    });
    expect(again.generation).toBe(1);
    expect((await runUntilIdle(data, 'ts', v1)).records).toBe(CLICKS.length - 3500);
    data.close();
  });
});

describe('migrations are checked over every entry before a restore writes anything', () => {
  /** A stopped savepoint of job `job` (FIRST processed: windows and bursts pending) in small files. */
  async function saved(job: string) {
    const data = await dataDir(ROOT);
    const backend = backendOf(data);
    await produce(data.log, FIRST);
    await runUntilIdle(data, job, v1);
    const manifest = await createSavepoint(backend, { job, stop: true, chunkEntries: 3 });
    expect(manifest.files.length).toBeGreaterThan(3);
    return { data, backend, manifest };
  }

  /** A restore of `savepointId` into new job `asJob` that crashed after writing its state entries. */
  async function crashedRestore(backend: SavepointBackend, savepointId: string, asJob: string) {
    const crash = restoreSavepoint(backend, {
      savepointId,
      plan: compile(v1),
      asJob,
      onStep: (step) => {
        if (step === 'entries-written') throw new SimulatedCrash('crash');
      },
    });
    await expect(crash).rejects.toBeInstanceOf(SimulatedCrash);
  }
  const rows = (data: DataDir, job: string, like = '%') =>
    countRows(data.db, 'SELECT count(*) AS n FROM floe_state WHERE job = ? AND address LIKE ?', job, like);

  it('a migration that throws or returns what cannot be stored on the last entry restores nothing; the fixed one restores exactly', async () => {
    const { data, backend, manifest } = await saved('mf');
    const restore = (migration: StateMigration) =>
      restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1), asJob: 'mf2', migration });
    // Fails on the last entry: before, every earlier file was written into the claimed job.
    let seen = 0;
    const throwsLast: StateMigration = {
      state(entry) {
        if (++seen === manifest.entries) throw new Error('boom');
        return entry;
      },
    };
    const thrown = restore(throwsLast);
    await expect(thrown).rejects.toBeInstanceOf(IncompatibleStateError);
    await expect(thrown).rejects.toThrow(
      /^the migration threw on the saved state entry of operator "(counts|bursts)" for key "\w+" \(state file .*state-\d+\.ndjson\.gz\): Error: boom\. Nothing was restored: fix the migration and rerun the replay$/,
    );
    await nothingRestored(data, 'mf2');
    seen = 0;
    const refusedLast: StateMigration = {
      state: (entry) => (++seen === manifest.entries ? { ...entry, state: { w: 5, n: 5 } } : entry),
    };
    await expect(restore(refusedLast)).rejects.toThrow(
      /state must be an array.*the migration returned 5 \(returned for the saved state entry of operator .*\)\. Nothing was restored/,
    );
    await nothingRestored(data, 'mf2');
    // The fixed migration drops the windows: none of the failed attempts' entries are left.
    const fixed = await restore({ state: (entry) => (entry.operator === 'counts' ? undefined : entry) });
    expect(fixed.written).toBeGreaterThan(0);
    expect(rows(data, 'mf2')).toBe(fixed.written);
    expect(rows(data, 'mf2', 'counts/%')).toBe(0);
    data.close();
  });

  it('a migration that fails only as the entries are written says it is not deterministic; a rerun completes', async () => {
    const { data, backend, manifest } = await saved('mn');
    let calls = 0;
    const flaky: StateMigration = {
      state(entry) {
        if (++calls === manifest.entries + 4) throw new Error('only the second time');
        return entry;
      },
    };
    const restore = (migration: StateMigration) =>
      restoreSavepoint(backend, {
        savepointId: manifest.id,
        plan: compile(v1),
        asJob: 'mn2',
        migration,
        batchEntries: 1,
      });
    const failed = restore(flaky);
    await expect(failed).rejects.toBeInstanceOf(StateFormatError);
    await expect(failed).rejects.toThrow(
      /^the migration threw on the saved state entry .*: Error: only the second time\. The migration passed on the same entry before anything was written.*must be deterministic\. 3 state entries were written and the restore is still in progress: rerun the same replay to complete it$/,
    );
    expect((await backend.jobs.get('mn2'))?.state).toBe('restoring');
    const rerun = await restore({ state: (entry) => entry });
    expect(rerun.written).toBe(manifest.entries);
    expect(rows(data, 'mn2')).toBe(manifest.entries);
    data.close();
  });

  it('refuses an entry whose state is not an object, and two entries for one operator and key', async () => {
    const { data, backend, manifest } = await saved('md');
    const restore = (migration: StateMigration) =>
      restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1), asJob: 'md2', migration });
    await expect(restore({ state: (entry) => ({ ...entry, state: 5 as never }) })).rejects.toThrow(
      /"state" must be a plain object of named states .*the migration returned 5.*Nothing was restored/,
    );
    await nothingRestored(data, 'md2');
    // One entry split into two with the same key.
    await expect(restore({ state: (entry) => [entry, { ...entry }] })).rejects.toThrow(
      /the migration returned two state entries for operator "(counts|bursts)", key "\w+" from the saved state entry .*merge them in the migration\. Nothing was restored/,
    );
    await nothingRestored(data, 'md2');
    // Two saved entries moved to one key.
    await expect(
      restore({ state: (entry) => (entry.operator === 'bursts' ? { ...entry, key: 'everyone' } : entry) }),
    ).rejects.toThrow(
      /the migration returned a second state entry for operator "bursts", key "everyone" \(from the saved entry of operator "bursts", key "\w+" in state file .*\).*Nothing was restored/,
    );
    await nothingRestored(data, 'md2');
    data.close();
  });

  it('checks every timer a timer migration returns as a checkpoint stores it, before writing anything', async () => {
    const { data, backend, manifest } = await saved('mt');
    const restore = (timer: NonNullable<StateMigration['timer']>) =>
      restoreSavepoint(backend, {
        savepointId: manifest.id,
        plan: compile(v1),
        asJob: 'mt2',
        migration: { timer },
      });
    const timer =
      /the event-time timer of operator "(counts|bursts)" for key "\w+" at \d+ \(namespace .*\) of shard shardId-\d+: the migration's timer\(\) returned/;
    for (const [map, refusal] of [
      [
        (t) => ({ ...t, time: String(t.time) }),
        /a timer whose time is not whole epoch milliseconds.*received "\d+"/,
      ],
      [
        (t) => ({ ...t, time: Number.NaN }),
        /a timer whose time is not whole epoch milliseconds.*received NaN/,
      ],
      [(t) => ({ ...t, time: t.time + 0.5 }), /whose time is not whole epoch milliseconds/],
      [(t) => ({ ...t, time: 1e300 }), /whose time is not whole epoch milliseconds/],
      [(t) => ({ ...t, key: { user: t.key } }), /whose key is not a string or a finite number/],
      [
        (t) => ({ ...t, namespace: Number.NaN }),
        /whose namespace is not a string or a finite number; received NaN/,
      ],
      [(t) => ({ ...t, domain: 'wall' }), /whose domain is not "event" or "processing"; received "wall"/],
      [
        (t) => ({ ...t, operator: 'gone' }),
        /whose operator is not one of the pipeline's \(operators: counts, bursts\); received "gone"/,
      ],
      [() => 'later', /\) returned "later"; expected \{operator, domain, time, key, namespace\}/],
    ] as Array<[NonNullable<StateMigration['timer']>, RegExp]>) {
      const refused = restore(map);
      await expect(refused).rejects.toBeInstanceOf(IncompatibleStateError);
      await expect(refused).rejects.toThrow(timer);
      await expect(refused).rejects.toThrow(refusal);
      await expect(refused).rejects.toThrow(/Nothing was restored/);
      await nothingRestored(data, 'mt2');
    }
    await expect(
      restore(() => {
        throw new Error('no timers today');
      }),
    ).rejects.toThrow(
      /^the migration's timer\(\) threw on the event-time timer of operator .*: Error: no timers today\. Nothing was restored/,
    );
    await nothingRestored(data, 'mt2');
    // ±Infinity is a timer time; extra fields are not stored.
    const kept = await restore(
      (t) =>
        ({ ...t, time: t.operator === 'counts' ? t.time : Number.POSITIVE_INFINITY, note: 1 }) as typeof t,
    );
    expect(kept.shards).toBe(3);
    const timers = (await backend.scope('mt2', 0).backend.listCheckpoints()).flatMap((cp) => cp.timers);
    expect(timers.length).toBeGreaterThan(0);
    expect(
      timers.filter((t) => t.operator === 'bursts').every((t) => t.time === Number.POSITIVE_INFINITY),
    ).toBe(true);
    expect(timers.every((t) => Object.keys(t).sort().join() === 'domain,key,namespace,operator,time')).toBe(
      true,
    );
    data.close();
  });

  it('a replay into a job another restore has not finished is refused, with the abandon command and its backend options', async () => {
    const { data, backend, manifest } = await saved('ur');
    await crashedRestore(backend, manifest.id, 'ur2');
    const second = await createSavepoint(backend, { job: 'ur' });
    const args = `--data-dir ${data.dir}`;
    await expect(
      restoreSavepoint(backend, {
        savepointId: second.id,
        plan: compile(v1),
        asJob: 'ur2',
        commandArgs: args,
      }),
    ).rejects.toThrow(`give it up: 'floe replay --abandon --job ur2 ${args}'`);
    await expect(
      prepareTimestampReplay(backend, {
        job: 'ur2',
        stream: STREAM,
        timestamp: 0,
        plan: compile(v1),
        commandArgs: args,
      }),
    ).rejects.toThrow(`give it up: 'floe replay --abandon --job ur2 ${args}'`);
    data.close();
  });

  it('savepoint delete refuses a savepoint an unfinished restore still reads, naming the job', async () => {
    const { data, backend, manifest } = await saved('dl');
    await crashedRestore(backend, manifest.id, 'dl2');
    expect((await backend.jobs.get('dl2'))?.state).toBe('restoring');
    const refused = deleteSavepoint(backend, manifest.id);
    await expect(refused).rejects.toBeInstanceOf(ConfigurationError);
    await expect(refused).rejects.toThrow(
      new RegExp(
        `^savepoint ${manifest.id} is being restored into job dl2 \\(generation 0, started .*\\), which did not finish.*rerun that replay \\('floe replay --from-savepoint ${manifest.id} --as-job dl2 --restore-only', with the same --pipeline and --migration\\) — or give it up \\('floe replay --abandon --job dl2'\\)`,
      ),
    );
    expect((await listSavepoints(backend.snapshots)).map((s) => s.status)).toEqual(['complete']);
    // Completed, the restore no longer needs it.
    await restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1), asJob: 'dl2' });
    await deleteSavepoint(backend, manifest.id);
    expect(await listSavepoints(backend.snapshots)).toEqual([]);
    data.close();
  });
});
