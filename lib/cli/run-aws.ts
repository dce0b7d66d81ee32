/** `floe run --backend aws`: the local runner against the endpoints the AWS SDK is configured for. */

import { type AwsJobConfig, awsClients, defaultResourceNames } from '../aws/job.ts';
import { DynamoJobStore } from '../aws/job-store.ts';
import {
  checkResources,
  checkSinkDestinations,
  createBucket,
  createStream,
  createTables,
  tableExists,
} from '../aws/resources.ts';
import { openAwsJobForRun } from '../aws/run-job.ts';
import { ConfigurationError, type PipelinePlan } from '../core/index.ts';
import type { JobRecord } from '../runtime/job-control.ts';
import { runJob } from '../runtime/local-runner.ts';
import {
  checkedRetryLine,
  checkGenerationFlag,
  formatCount,
  formatTime,
  raisedGenerationWarning,
  retryNotice,
} from './args.ts';

export interface RunAwsOptions {
  readonly plan: PipelinePlan;
  readonly job: string;
  readonly stream: string | undefined;
  readonly stateTable: string | undefined;
  readonly controlTable: string | undefined;
  readonly bucket: string | undefined;
  readonly sinks: readonly string[];
  readonly createResources: boolean;
  readonly shards: number;
  /** State generation of a job without a job record (checkGenerationFlag). @default 0 */
  readonly generation?: number;
  readonly untilIdle: boolean;
  readonly batchSize: number;
  readonly commitIntervalMs: number;
  readonly maxCachedKeys: number;
  readonly leaseTtlMs: number;
  readonly quiet: boolean;
  /** The pipeline module's path (recorded in the job record; savepoints name it). */
  readonly pipelineModule?: string;
}

/**
 * Whether the control table exists and the job's record (undefined when it has none or its
 * control table does not exist (yet)). checkResources is told whether the table exists rather
 * than describing it again.
 */
async function recordedJob(
  clients: ReturnType<typeof awsClients>,
  controlTable: string,
  job: string,
): Promise<{ readonly tableExists: boolean; readonly record: JobRecord | undefined }> {
  // Unretried, so an unreachable endpoint or missing credentials fail at once (explainAwsError).
  // A missing table is reported with every other missing resource by checkResources.
  if (!(await tableExists(clients.dynamodb, controlTable))) return { tableExists: false, record: undefined };
  return { tableExists: true, record: await new DynamoJobStore(clients.dynamodb, controlTable).get(job) };
}

/**
 * The options that make another floe command (`floe replay`, `floe savepoint`) use this job's
 * AWS resources: `--backend aws --job <job>` and the resource flags given explicitly.
 */
export function awsCommandArgs(
  job: string,
  flags: {
    readonly 'state-table'?: string | undefined;
    readonly 'control-table'?: string | undefined;
    readonly bucket?: string | undefined;
    readonly 'savepoint-dir'?: string | undefined;
  },
): string {
  const args = ['--backend aws', `--job ${job}`];
  for (const flag of ['state-table', 'control-table', 'bucket', 'savepoint-dir'] as const) {
    const value = flags[flag];
    if (value !== undefined) args.push(`--${flag} ${value}`);
  }
  return args.join(' ');
}

/** Turns the SDK's configuration failures into one clear line. */
export function explainAwsError(error: unknown): unknown {
  const name = (error as { name?: string })?.name ?? '';
  const message = (error as Error)?.message ?? String(error);
  if (name === 'CredentialsProviderError' || /Could not load credentials/.test(message)) {
    return new ConfigurationError(
      'no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (any values for an emulator)',
    );
  }
  const rejectedRegion = /Region not accepted: region="([^"]*)"/.exec(message);
  if (/Region is missing/i.test(message) || rejectedRegion?.[1] === '') {
    return new ConfigurationError('no AWS region configured: set AWS_REGION (e.g. us-east-1)');
  }
  if (rejectedRegion !== null) {
    return new ConfigurationError(
      `AWS region "${rejectedRegion[1]}" is not a valid region name: set AWS_REGION to one such as us-east-1`,
    );
  }
  if (['UnrecognizedClientException', 'InvalidSignatureException', 'InvalidClientTokenId'].includes(name)) {
    return new ConfigurationError(
      `AWS rejected the credentials (${name}): check AWS_PROFILE / the access keys and AWS_REGION`,
    );
  }
  // A connection failure, also when it reached us as the last error of exhausted retries
  // (TransientBackendError, whose advice — throttling, capacity — does not apply to it).
  const network = networkFailure(error);
  if (network?.code === 'ECONNREFUSED') {
    return new ConfigurationError(
      `cannot reach the AWS endpoint (${network.message}); is the emulator running and AWS_ENDPOINT_URL right?`,
    );
  }
  if (network?.code === 'ENOTFOUND' || network?.code === 'EAI_AGAIN') {
    const host = network.hostname ?? /(?:ENOTFOUND|EAI_AGAIN) (\S+)/.exec(network.message)?.[1] ?? '?';
    return new ConfigurationError(
      `cannot resolve the AWS endpoint host "${host}" (${network.code}): check the host in AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_<SERVICE>) and the region in AWS_REGION ("${process.env.AWS_REGION ?? ''}")`,
    );
  }
  if (/Deserialization error/.test(message)) {
    const status = (error as { $response?: { statusCode?: number } }).$response?.statusCode;
    return new ConfigurationError(
      `the AWS endpoint answered with something that is not an AWS response${status === undefined ? '' : ` (HTTP ${status})`}: check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_<SERVICE>) points at the service, and AWS_REGION ("${process.env.AWS_REGION ?? ''}")`,
    );
  }
  return error;
}

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN']);

/** The connection error (refused, unresolvable host) in `error` or its causes, if any. */
function networkFailure(
  error: unknown,
): { readonly code: string; readonly message: string; readonly hostname?: string } | undefined {
  let e = error as { code?: unknown; message?: unknown; hostname?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; depth < 6 && typeof e === 'object' && e !== null; depth++) {
    const code =
      typeof e.code === 'string'
        ? e.code
        : /\b(ECONNREFUSED|ENOTFOUND|EAI_AGAIN)\b/.exec(String(e.message))?.[1];
    if (code !== undefined && CONNECTION_CODES.has(code)) {
      return {
        code,
        message: String(e.message),
        ...(typeof e.hostname === 'string' ? { hostname: e.hostname } : {}),
      };
    }
    e = e.cause as typeof e;
  }
  return undefined;
}

export async function runAws(options: RunAwsOptions): Promise<number> {
  const defaults = defaultResourceNames(options.job);
  const controlTable = options.controlTable ?? defaults.controlTable;
  const clients = awsClients();
  const controller = new AbortController();
  const stop = (): void => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const started = Date.now();
  try {
    // The stream: --stream, else the one the job record names (a job keeps its stream), else the
    // pipeline name, as on the embedded backend.
    const { tableExists: controlTableExists, record } = await recordedJob(clients, controlTable, options.job);
    const config: AwsJobConfig = {
      job: options.job,
      stream: options.stream ?? record?.stream ?? options.plan.name,
      stateTable: options.stateTable ?? defaults.stateTable,
      controlTable,
      bucket: options.bucket ?? defaults.bucket,
      sinks: options.sinks,
      ...(options.generation === undefined ? {} : { generation: options.generation }),
    };
    if (options.createResources) {
      await createStream(clients.kinesis, config.stream, options.shards);
      await createTables(clients.dynamodb, config.stateTable, config.controlTable);
      await createBucket(clients.s3, config.bucket);
    }
    // The tables were just described: by recordedJob, or by createTables, which waits until
    // both exist.
    await checkResources(
      clients,
      config,
      undefined,
      new Map(
        options.createResources
          ? [
              [config.stateTable, true],
              [config.controlTable, true],
            ]
          : [[controlTable, controlTableExists]],
      ),
    );
    checkGenerationFlag(config.job, options.generation, record);
    await checkSinkDestinations(clients, options.sinks);
    const { runtime, generation } = await openAwsJobForRun(options.plan, config, clients, {
      pipeline: {
        name: options.plan.name,
        version: options.plan.version,
        ...(options.pipelineModule === undefined ? {} : { module: options.pipelineModule }),
      },
      commandArgs: awsCommandArgs(config.job, {
        'state-table': options.stateTable,
        'control-table': options.controlTable,
        bucket: options.bucket,
      }),
    });
    const raised = raisedGenerationWarning('run', config.job, options.generation, generation);
    if (raised !== undefined) console.error(raised);
    const summary = await runJob(runtime, {
      untilIdle: options.untilIdle,
      batchSize: options.batchSize,
      commitIntervalMs: options.commitIntervalMs,
      maxCachedKeys: options.maxCachedKeys,
      leaseTtlMs: options.leaseTtlMs,
      signal: controller.signal,
      // A shard stopped on a retryable failure (throttling, a sink that keeps failing, another
      // worker's lease) runs again next round: say why (a warning, not progress: also with
      // --progress none), or the run just waits.
      onLeaseBusy: retryNotice((line) => {
        if (!options.quiet && process.stderr.isTTY) process.stderr.write('\n'); // below the progress line
        console.error(line);
      }),
      onCheckedRetry: (error) => {
        if (!options.quiet && process.stderr.isTTY) process.stderr.write('\n');
        console.error(checkedRetryLine(error));
      },
      onCommit: (p) => {
        if (!options.quiet && process.stderr.isTTY) {
          process.stderr.write(
            `\r\x1b[2K${p.shardId} commit ${p.commitNumber} watermark ${formatTime(p.watermark)} behind ${p.millisBehindLatest} ms`,
          );
        }
      },
    });
    if (!options.quiet && process.stderr.isTTY) process.stderr.write('\n');
    const seconds = (Date.now() - started) / 1000;
    console.error(
      `floe run: job "${config.job}" processed ${formatCount(summary.records)} records from ${config.stream} in ${seconds.toFixed(1)} s, ${summary.commits} commits`,
    );
    if (summary.stopped !== undefined) console.error(`  stopped: ${summary.stopped}`);
    return 0;
  } catch (error) {
    throw explainAwsError(error);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    clients.destroy();
  }
}

/**
 * For `floe replay --backend aws` before it restores anything: the `--sink` destinations exist
 * (checkSinkDestinations), explained as `floe run` explains AWS errors.
 */
export async function checkAwsSinkDestinations(specs: readonly string[]): Promise<void> {
  if (specs.length === 0) return;
  const clients = awsClients();
  try {
    await checkSinkDestinations(clients, specs);
  } catch (error) {
    throw explainAwsError(error);
  } finally {
    clients.destroy();
  }
}
