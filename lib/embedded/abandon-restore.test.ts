/**
 * `floe replay --abandon` on the embedded backend, in process: an unfinished restore given up
 * puts the job record back as it was (or removes the job the restore created), deletes what the
 * restore wrote, and a restore process still running stops without writing anything more.
 */
import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { compile, type SavepointManifest } from '../core/index.ts';
import type { JobRecord } from '../runtime/job-control.ts';
import {
  abandonRestore,
  createSavepoint,
  deleteSavepoint,
  listSavepoints,
  NoRestoreToAbandonError,
  restoreSavepoint,
  type SavepointBackend,
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
import { clicksPipeline, generateClicks } from './testing/savepoint-pipelines.ts';

const ROOT = tmpRoot();
afterAll(() => rmSync(ROOT, { recursive: true, force: true }));

const CLICKS = generateClicks(3000, { seed: 7 });
const FIRST = CLICKS.slice(0, 1500);
const SECOND = CLICKS.slice(1500);
const v1 = clicksPipeline('v1');

/** The record without what every write changes. */
function comparable(record: JobRecord | undefined) {
  if (record === undefined) return undefined;
  const { version: _v, updatedAt: _u, nextGeneration: _n, ...rest } = record;
  return rest;
}

/** State rows and checkpoints of one (job, generation); undefined generation: all of the job's. */
function written(data: DataDir, job: string, generation?: number): { state: number; checkpoints: number } {
  const where = generation === undefined ? 'job = ?' : 'job = ? AND generation = ?';
  const params = generation === undefined ? [job] : [job, generation];
  return {
    state: countRows(data.db, `SELECT count(*) AS n FROM floe_state WHERE ${where}`, ...params),
    checkpoints: countRows(data.db, `SELECT count(*) AS n FROM floe_checkpoint WHERE ${where}`, ...params),
  };
}

/** Job `job` ran FIRST and has a savepoint (not stopped) in small files. */
async function saved(
  job: string,
): Promise<{ data: DataDir; backend: SavepointBackend; manifest: SavepointManifest }> {
  const data = await dataDir(ROOT);
  const backend = backendOf(data);
  await produce(data.log, FIRST);
  await runUntilIdle(data, job, v1);
  const manifest = await createSavepoint(backend, { job, chunkEntries: 3 });
  expect(manifest.files.length).toBeGreaterThan(2);
  return { data, backend, manifest };
}

/** A restore that crashes after its second state file, leaving the restore in progress. */
async function crashedRestore(backend: SavepointBackend, savepointId: string, asJob?: string): Promise<void> {
  await expect(
    restoreSavepoint(backend, {
      savepointId,
      plan: compile(v1),
      ...(asJob === undefined ? {} : { asJob }),
      onStep: (step, index) => {
        if (step === 'entries-written' && index === 1) throw new SimulatedCrash('crash');
      },
    }),
  ).rejects.toBeInstanceOf(SimulatedCrash);
}

describe('abandoning an unfinished restore (embedded)', () => {
  it('into the same job: the record is as before the restore, its generation is deleted and never reused; the job runs on', async () => {
    const { data, backend, manifest } = await saved('ab');
    const jobs = new SqliteJobStore(data.db);
    const before = await jobs.get('ab');
    expect(before).toMatchObject({ generation: 0, nextGeneration: 1, state: 'running' });
    await crashedRestore(backend, manifest.id);
    expect((await jobs.get('ab'))?.restore).toMatchObject({ savepointId: manifest.id, generation: 1 });
    const partial = written(data, 'ab', 1);
    expect(partial.state).toBeGreaterThan(0);
    await expect(deleteSavepoint(backend, manifest.id)).rejects.toThrow(/is being restored into job ab/);

    const result = await abandonRestore(backend, { job: 'ab' });
    expect(result).toMatchObject({
      job: 'ab',
      savepointId: manifest.id,
      generation: 1,
      resumed: false,
      discarded: { stateEntries: partial.state, checkpoints: 0 },
    });
    const after = await jobs.get('ab');
    expect(after).toEqual(result.record);
    expect(comparable(after)).toEqual(comparable(before));
    expect(after?.nextGeneration).toBe(2); // the abandoned generation is never used again
    expect(written(data, 'ab', 1)).toEqual({ state: 0, checkpoints: 0 });
    expect(await jobs.restoresFrom(manifest.id)).toEqual([]);

    // Nothing to abandon any more; an unknown job has no record.
    const again = abandonRestore(backend, { job: 'ab' });
    await expect(again).rejects.toBeInstanceOf(NoRestoreToAbandonError);
    await expect(again).rejects.toThrow(
      /^job ab has no restore in progress: it runs generation 0 \(running\); there is nothing to abandon$/,
    );
    await expect(abandonRestore(backend, { job: 'nope' })).rejects.toThrow(
      /^job nope has no job record, so there is no restore to abandon \(received --job nope\)/,
    );

    // The job runs on in generation 0, as if no replay had been started.
    await produce(data.log, SECOND);
    await runUntilIdle(data, 'ab', v1);
    await runUntilIdle(data, 'ab-ref', v1);
    const outputs = outputsOf(data.db, 'ab');
    expect(new Set(outputs.map((o) => o.job))).toEqual(new Set(['ab']));
    expect(valuesByShard(outputs)).toEqual(valuesByShard(outputsOf(data.db, 'ab-ref')));
    // A later replay restores into a fresh generation.
    const replayed = await restoreSavepoint(backend, { savepointId: manifest.id, plan: compile(v1) });
    expect(replayed.generation).toBe(2);
    expect(written(data, 'ab', 2).state).toBe(manifest.entries);
    data.close();
  });

  it('into a new job (--as-job): the job is removed with what the restore wrote, the savepoint can be deleted and the id used again', async () => {
    const { data, backend, manifest } = await saved('an');
    const jobs = new SqliteJobStore(data.db);
    await crashedRestore(backend, manifest.id, 'an2');
    expect(await jobs.get('an2')).toMatchObject({ state: 'restoring' });
    expect(written(data, 'an2').state).toBeGreaterThan(0);

    const result = await abandonRestore(backend, { job: 'an2' });
    expect(result).toMatchObject({ job: 'an2', generation: 0, record: undefined, nextGeneration: 1 });
    expect(await jobs.get('an2')).toBeUndefined();
    expect(await jobs.list()).not.toContainEqual(expect.objectContaining({ job: 'an2' }));
    expect(written(data, 'an2')).toEqual({ state: 0, checkpoints: 0 });
    await expect(abandonRestore(backend, { job: 'an2' })).rejects.toThrow(/^job an2 has no job record/);
    await deleteSavepoint(backend, manifest.id);
    expect(await listSavepoints(backend.snapshots)).toEqual([]);

    // A later job of the id starts past the abandoned generation (as on DynamoDB, where a
    // restore process still running may write into it).
    const next = await createSavepoint(backend, { job: 'an' });
    const reused = await restoreSavepoint(backend, { savepointId: next.id, plan: compile(v1), asJob: 'an2' });
    expect(reused).toMatchObject({ job: 'an2', generation: 1 });
    expect(await jobs.get('an2')).toMatchObject({ generation: 1, nextGeneration: 2, version: 5 });
    expect(written(data, 'an2', 1).state).toBe(next.entries);
    data.close();
  });

  it('an interrupted abandon keeps the job from running until a rerun finishes it', async () => {
    const { data, backend, manifest } = await saved('ai');
    await crashedRestore(backend, manifest.id, 'ai2');
    const failing: SavepointBackend = {
      ...backend,
      scope(job, generation) {
        return { ...backend.scope(job, generation), discard: () => Promise.reject(new Error('killed')) };
      },
    };
    await expect(abandonRestore(failing, { job: 'ai2' })).rejects.toThrow('killed');
    const record = await backend.jobs.get('ai2');
    expect(record).toMatchObject({
      state: 'restoring',
      abandoning: { savepointId: manifest.id, generation: 0 },
    });
    expect(record?.restore).toBeUndefined();
    const unfinished =
      /the restore of savepoint .* was abandoned, but the abandon stopped .* rerun 'floe replay --abandon --job ai2/;
    // The suggested command names the backend options when the caller knows them (floe run: the
    // data directory), and asks for them in words when it does not.
    const run = openEmbeddedJobForRun({ dataDir: data.dir, stream: STREAM, job: 'ai2', plan: compile(v1) });
    await expect(run).rejects.toThrow(unfinished);
    await expect(run).rejects.toThrow(
      `'floe replay --abandon --job ai2 --data-dir ${data.dir}' to finish it`,
    );
    const restore = (commandArgs?: string) =>
      restoreSavepoint(backend, {
        savepointId: manifest.id,
        plan: compile(v1),
        asJob: 'ai2',
        ...(commandArgs === undefined ? {} : { commandArgs }),
      });
    await expect(restore()).rejects.toThrow(
      "rerun 'floe replay --abandon --job ai2' (with the same backend options) to finish it",
    );
    await expect(restore('')).rejects.toThrow("rerun 'floe replay --abandon --job ai2' to finish it");
    await expect(restore('--data-dir d')).rejects.toThrow(
      "rerun 'floe replay --abandon --job ai2 --data-dir d' to finish it",
    );
    const finished = await abandonRestore(backend, { job: 'ai2' });
    expect(finished).toMatchObject({ resumed: true, record: undefined });
    expect(await backend.jobs.get('ai2')).toBeUndefined();
    expect(written(data, 'ai2')).toEqual({ state: 0, checkpoints: 0 });
    data.close();
  });

  it('an abandon that finishes after a concurrent one freed the id and a later job of it started reports that job, not the job as it left it', async () => {
    const { data, backend, manifest } = await saved('ar');
    await crashedRestore(backend, manifest.id, 'ar2');
    // The first abandon marks the record, then stalls before deleting what the restore wrote.
    const pause = pausePoint();
    const stalling: SavepointBackend = {
      ...backend,
      scope(job, generation) {
        const scope = backend.scope(job, generation);
        const discard = async () => {
          await pause.wait();
          return scope.discard();
        };
        return { ...scope, discard };
      },
    };
    const first = abandonRestore(stalling, { job: 'ar2' });
    await pause.reached;
    // A second one finishes it (the id is freed), and a job of the id starts at generation 1.
    expect(await abandonRestore(backend, { job: 'ar2' })).toMatchObject({ resumed: true, record: undefined });
    const later = await openEmbeddedJobForRun({
      dataDir: data.dir,
      stream: STREAM,
      job: 'ar2',
      plan: compile(v1),
    });
    await later.close();
    pause.release();
    const result = await first;
    expect(result).toMatchObject({ job: 'ar2', generation: 0, record: undefined });
    expect(result.laterJob).toMatchObject({ job: 'ar2', generation: 1, state: 'running' });
    expect(await backend.jobs.get('ar2')).toMatchObject({ generation: 1 });
    data.close();
  });

  /**
   * A restore of job `job`'s savepoint (into `asJob`, if given) stalls where `stall` puts it (by
   * default after its first state file); the
   * operator abandons it; then it goes on. It must fail saying so, and leave nothing: the job
   * record as the abandon left it and no state or checkpoint in the abandoned generation.
   */
  async function expectAbandonedRestoreWritesNothing(
    job: string,
    asJob: string | undefined,
    stall?: (backend: SavepointBackend, pause: ReturnType<typeof pausePoint>) => SavepointBackend,
  ): Promise<void> {
    const { data, backend, manifest } = await saved(job);
    const target = asJob ?? job;
    const before = await backend.jobs.get(target);
    const pause = pausePoint();
    const stalled = restoreSavepoint(stall === undefined ? backend : stall(backend, pause), {
      savepointId: manifest.id,
      plan: compile(v1),
      ...(asJob === undefined ? {} : { asJob }),
      onStep: async (step, index) => {
        if (step === 'entries-written' && index === 0 && stall === undefined) await pause.wait();
      },
    });
    await pause.reached;
    const generation = asJob === undefined ? 1 : 0;
    expect(written(data, target, generation).state).toBeGreaterThan(0);
    await abandonRestore(backend, { job: target });
    const abandoned = await backend.jobs.get(target);
    pause.release();
    const error = await stalled.catch((e: Error) => e);
    expect(String(error)).toMatch(
      new RegExp(
        `the restore of savepoint ${manifest.id} into job ${target} \\(generation ${generation}\\) was completed or superseded by another replay, or abandoned \\('floe replay --abandon'\\), while this one was writing; it stopped without writing more`,
      ),
    );
    expect(await backend.jobs.get(target)).toEqual(abandoned);
    expect(comparable(abandoned)).toEqual(comparable(before));
    expect(written(data, target, generation)).toEqual({ state: 0, checkpoints: 0 });
    data.close();
  }

  it('a restore process that stalled after its first state file and goes on after the abandon writes nothing more (same job and --as-job)', async () => {
    await expectAbandonedRestoreWritesNothing('zs', undefined);
    await expectAbandonedRestoreWritesNothing('zn', 'zn2');
  });

  it('a restore that stalled between its check of the job record and a write writes nothing: the state and checkpoint writes check it in their transaction', async () => {
    // Past the check before its second batch of entries.
    await expectAbandonedRestoreWritesNothing('ze', 'ze2', (backend, pause) => ({
      ...backend,
      scope(job, generation) {
        const scope = backend.scope(job, generation);
        let batches = 0;
        return {
          ...scope,
          async importEntries(entries, guard) {
            if (++batches === 2) await pause.wait();
            await scope.importEntries(entries, guard);
          },
        };
      },
    }));
    // Past the check before the checkpoints.
    await expectAbandonedRestoreWritesNothing('zc', undefined, (backend, pause) => ({
      ...backend,
      scope(job, generation) {
        const scope = backend.scope(job, generation);
        return {
          ...scope,
          async importCheckpoint(checkpoint, guard) {
            await pause.wait();
            await scope.importCheckpoint(checkpoint, guard);
          },
        };
      },
    }));
  });
});
