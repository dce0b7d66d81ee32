/**
 * Opening an embedded job the way `floe run` does: through its job record, which names the
 * state generation to run and where new shards start, and whose control (savepoint pause,
 * stop, newer generation) the workers follow.
 */
import {
  ConfigurationError,
  operatorSchemas,
  type PipelinePlan,
  type SavepointPipeline,
} from '../core/index.ts';
import { checkJobId } from '../core/job-id.ts';
import { type JobRecord, resolveJobForRun } from '../runtime/job-control.ts';
import { databasePath, type EmbeddedJob, embeddedCommandArgs, openEmbeddedJob } from './job.ts';
import { SqliteJobStore } from './job-store.ts';
import { LocalLog } from './local-log.ts';
import { openSqlite } from './sqlite.ts';

export interface EmbeddedJobFromRecord extends EmbeddedJob {
  readonly generation: number;
  readonly stream: string;
  readonly record: JobRecord;
}

export async function openEmbeddedJobForRun(options: {
  readonly dataDir: string;
  /** @default the stream in the job record, else the pipeline name */
  readonly stream?: string | undefined;
  readonly job: string;
  readonly plan: PipelinePlan;
  /** Recorded in the job record; savepoints copy it. @default plan name and version */
  readonly pipeline?: SavepointPipeline;
  readonly clock?: () => number;
}): Promise<EmbeddedJobFromRecord> {
  const jobId = checkJobId(options.job);
  // A second connection for the job record: workers read it between batches.
  const control = openSqlite(databasePath(options.dataDir));
  try {
    const jobs = new SqliteJobStore(control);
    const stream = options.stream ?? (await jobs.get(jobId))?.stream ?? options.plan.name;
    const streams = await new LocalLog(control).listStreams();
    if (!streams.includes(stream)) {
      throw new ConfigurationError(
        `unknown stream "${stream}" in ${databasePath(options.dataDir)}; streams: ${streams.join(', ') || 'none'}. Create it with 'floe produce --stream ${stream} ...'`,
      );
    }
    const dirArgs = embeddedCommandArgs(options.dataDir);
    const toRun = await resolveJobForRun(jobs, {
      job: jobId,
      stream,
      // The replay and abandon commands a refusal suggests must reach this data directory.
      ...(dirArgs === '' ? {} : { commandArgs: `--job ${jobId} ${dirArgs}` }),
      pipeline: options.pipeline ?? { name: options.plan.name, version: options.plan.version },
      operators: operatorSchemas(options.plan),
    });
    const job = await openEmbeddedJob({
      dataDir: options.dataDir,
      stream,
      job: jobId,
      plan: options.plan,
      generation: toRun.generation,
      control: toRun.control,
      ...(toRun.startPosition === undefined ? {} : { startPosition: toRun.startPosition }),
      ...(options.clock === undefined ? {} : { clock: options.clock }),
    });
    return {
      ...job,
      generation: toRun.generation,
      stream,
      record: toRun.record,
      async close() {
        await job.close();
        control.close();
      },
    };
  } catch (error) {
    control.close();
    throw error;
  }
}
