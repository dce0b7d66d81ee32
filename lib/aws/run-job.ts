/**
 * Opening an AWS job through its job record (in the control table): the state generation to
 * run, where new shards start, and the control (savepoint pause, stop, newer generation) that
 * workers follow. Used by `floe run --backend aws` and the Lambda handlers.
 */
import { operatorSchemas, type PipelinePlan, type SavepointPipeline } from '../core/index.ts';
import type { JobRuntime } from '../runtime/job.ts';
import {
  checkStateLayout,
  decide,
  generationOf,
  type JobRecord,
  jobControl,
  resolveJobForRun,
} from '../runtime/job-control.ts';
import type { DynamoBackend } from './dynamodb-backend.ts';
import { type AwsClientsBundle, type AwsJobConfig, openAwsJob } from './job.ts';
import { DynamoJobStore } from './job-store.ts';

export type AwsJobRuntime = JobRuntime & { readonly backend: DynamoBackend };

/** `floe run`: finds or creates the job record (refusing a stopped job, saying why) and opens the job. */
export async function openAwsJobForRun(
  plan: PipelinePlan,
  config: AwsJobConfig,
  clients: AwsClientsBundle,
  options: {
    readonly pipeline?: SavepointPipeline;
    /** Added to the commands a refusal suggests (resolveJobForRun's commandArgs). */
    readonly commandArgs?: string;
  } = {},
): Promise<{ runtime: AwsJobRuntime; record: JobRecord; generation: number }> {
  const jobs = new DynamoJobStore(clients.dynamodb, config.controlTable);
  const toRun = await resolveJobForRun(jobs, {
    job: config.job,
    stream: config.stream,
    pipeline: options.pipeline ?? { name: plan.name, version: plan.version },
    operators: operatorSchemas(plan),
    // A job without a record is at the generation its Lambda workers run (openAwsJobFromRecord).
    ...(config.generation === undefined ? {} : { generation: config.generation }),
    ...(options.commandArgs === undefined ? {} : { commandArgs: options.commandArgs }),
  });
  const runtime = openAwsJob(plan, { ...config, generation: toRun.generation }, clients);
  return {
    runtime: {
      ...runtime,
      control: toRun.control,
      ...(toRun.startPosition === undefined ? {} : { startPosition: toRun.startPosition }),
    },
    record: toRun.record,
    generation: toRun.generation,
  };
}

/**
 * For the Lambda handlers: the job as its record says (generation, start position, control),
 * without writing the record. A job with no record runs generation `config.generation`, or
 * past a removed record's generations (firstGeneration: the id was freed by an abandoned
 * restore, whose late writes may lie below). Returns undefined when the job must not run now (stopped, restoring, paused for a savepoint),
 * with the reason.
 */
export async function openAwsJobFromRecord(
  plan: PipelinePlan,
  config: AwsJobConfig,
  clients: AwsClientsBundle,
): Promise<{ runtime: AwsJobRuntime; reason?: undefined } | { runtime?: undefined; reason: string }> {
  const jobs = new DynamoJobStore(clients.dynamodb, config.controlTable);
  const found = await jobs.lookup(config.job);
  const record = found.record;
  const generation = generationOf(found, config.generation);
  const decision = decide(record, generation, Date.now());
  if (decision.action !== 'run') return { reason: decision.reason };
  // A deploy that changed the state layout fails the invocation (WorkerErrors), rather than
  // misreading the stored state. Without a record (never run by floe run or a savepoint), the
  // layout is not known: docs/savepoints.md.
  if (record !== undefined) checkStateLayout(record, plan.name, operatorSchemas(plan));
  const runtime = openAwsJob(plan, { ...config, generation }, clients);
  return {
    runtime: {
      ...runtime,
      control: jobControl(jobs, config.job, generation),
      ...(record?.startPosition === undefined ? {} : { startPosition: record.startPosition }),
    },
  };
}
