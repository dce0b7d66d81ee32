/**
 * Wiring a job to AWS (or to emulators): clients, the Kinesis source, the DynamoDB + S3
 * backend and the sink bindings, from explicit options or from the environment of a Lambda.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KinesisClient } from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { ConfigurationError, describeValue, type PipelinePlan } from '../core/index.ts';
import type { JobRuntime } from '../runtime/job.ts';
import { outputJobId } from '../runtime/job-control.ts';
import { DELTA_APPLY_MODES, type DeltaApplyMode, DynamoBackend } from './dynamodb-backend.ts';
import { KinesisSource } from './kinesis-source.ts';
import { S3ObjectSink } from './sinks.ts';
import { routingSinkFromSpecs } from './sinks-config.ts';

export interface AwsJobConfig {
  readonly job: string;
  readonly stream: string;
  readonly stateTable: string;
  readonly controlTable: string;
  readonly bucket: string;
  /** Sink bindings `name=destination` (see docs/operations.md); unbound sinks go to S3 `outputs/`. */
  readonly sinks: readonly string[];
  /** State generation. @default 0 */
  readonly generation?: number;
  /**
   * How large commits' deltas are applied (DynamoBackendOptions.deltaApply; `FLOE_DELTA_APPLY` in
   * a Lambda's environment). @default 'items'
   */
  readonly deltaApply?: DeltaApplyMode;
  /**
   * The worker's commit interval (WorkerOptions.commitIntervalMs; `FLOE_COMMIT_INTERVAL_MS` in a
   * Lambda's environment). @default 0 (commit after every read)
   */
  readonly commitIntervalMs?: number;
  /**
   * Keys each keyed operator of a worker keeps in memory (WorkerOptions.maxCachedKeys;
   * `FLOE_MAX_CACHED_KEYS` in a Lambda's environment). @default 100_000
   */
  readonly maxCachedKeys?: number;
  /**
   * Least time between two GetRecords calls on a shard (KinesisSourceOptions.minGetRecordsIntervalMs;
   * `FLOE_MIN_GET_RECORDS_INTERVAL_MS` in a Lambda's environment). A shard serves 5 reads a second
   * to all its consumers: with n of them, give each n * 200 ms. @default 200
   */
  readonly minGetRecordsIntervalMs?: number;
}

export interface AwsClientsBundle {
  readonly kinesis: KinesisClient;
  readonly dynamodb: DynamoDBClient;
  readonly s3: S3Client;
  destroy(): void;
}

/**
 * How long a request may wait without a byte from the service (a connection dropped without a
 * reset, a black-holed endpoint) before it fails with a TimeoutError, which the SDK and the
 * callers retry. Without it such a request waits forever: a sink's publish or a commit, and with
 * it the shard (or, under `floe run`, every shard of the round). Idle time, not total time: a
 * long upload that makes progress is not cut.
 */
export const SOCKET_IDLE_TIMEOUT_MS = 30_000;

/**
 * Clients for the configured region and endpoints. With a custom endpoint (an emulator or
 * LocalStack, via AWS_ENDPOINT_URL[_SERVICE]) Kinesis uses HTTP/1.1 and S3 path-style URLs.
 * Every request fails after `socketIdleTimeoutMs` without activity (SOCKET_IDLE_TIMEOUT_MS).
 */
export function awsClients(
  env: NodeJS.ProcessEnv = process.env,
  options: { readonly socketIdleTimeoutMs?: number } = {},
): AwsClientsBundle {
  const custom = (service: string): boolean =>
    env.AWS_ENDPOINT_URL !== undefined || env[`AWS_ENDPOINT_URL_${service}`] !== undefined;
  const idle = options.socketIdleTimeoutMs ?? SOCKET_IDLE_TIMEOUT_MS;
  // requestTimeout alone only logs a warning (unless throwOnRequestTimeout): socketTimeout fails.
  const handler = (): NodeHttpHandler =>
    new NodeHttpHandler({ connectionTimeout: 5_000, socketTimeout: idle });
  // Kinesis on AWS keeps the SDK's HTTP/2 handler, whose requestTimeout is a stream's idle time.
  const kinesis = new KinesisClient({
    requestHandler: custom('KINESIS') ? handler() : { requestTimeout: idle },
  });
  const dynamodb = new DynamoDBClient({ requestHandler: handler() });
  const s3 = new S3Client(
    custom('S3') ? { forcePathStyle: true, requestHandler: handler() } : { requestHandler: handler() },
  );
  return {
    kinesis,
    dynamodb,
    s3,
    destroy() {
      kinesis.destroy();
      dynamodb.destroy();
      s3.destroy();
    },
  };
}

/** Default resource names for a job (what `floe run --create-resources` creates). */
export function defaultResourceNames(job: string): Omit<AwsJobConfig, 'job' | 'sinks'> {
  const base = `floe-${job.toLowerCase().replace(/[^a-z0-9-]/g, '-')}`;
  return {
    stream: job,
    stateTable: `${base}-state`,
    controlTable: `${base}-control`,
    bucket: base.slice(0, 63),
  };
}

/** Reads the job configuration a Lambda function receives in its environment. */
export function awsJobConfigFromEnv(env: NodeJS.ProcessEnv = process.env): AwsJobConfig {
  const need = (name: string): string => {
    const value = env[name];
    if (value === undefined || value === '') {
      throw new ConfigurationError(
        `environment variable ${name} is not set; the StreamProcessor construct sets it`,
      );
    }
    return value;
  };
  let sinks: string[] = [];
  if (env.FLOE_SINKS !== undefined && env.FLOE_SINKS !== '') {
    try {
      sinks = JSON.parse(env.FLOE_SINKS) as string[];
    } catch {
      throw new ConfigurationError(
        `FLOE_SINKS must be a JSON array of "name=destination" strings; received ${describeValue(env.FLOE_SINKS)}`,
      );
    }
  }
  const commitIntervalMs = wholeNumber(env, 'FLOE_COMMIT_INTERVAL_MS', 'milliseconds', 0);
  const maxCachedKeys = wholeNumber(env, 'FLOE_MAX_CACHED_KEYS', 'keys', 1);
  const minGetRecordsIntervalMs = wholeNumber(env, 'FLOE_MIN_GET_RECORDS_INTERVAL_MS', 'milliseconds', 0);
  return {
    job: need('FLOE_JOB'),
    stream: need('FLOE_STREAM'),
    stateTable: need('FLOE_STATE_TABLE'),
    controlTable: need('FLOE_CONTROL_TABLE'),
    bucket: need('FLOE_BUCKET'),
    sinks,
    // The generation is part of every state key and output id: a bad value must not become NaN.
    generation: wholeNumber(env, 'FLOE_GENERATION', undefined, 0) ?? 0,
    ...(env.FLOE_DELTA_APPLY === undefined || env.FLOE_DELTA_APPLY === ''
      ? {}
      : { deltaApply: deltaApplyMode(env.FLOE_DELTA_APPLY) }),
    ...(commitIntervalMs === undefined ? {} : { commitIntervalMs }),
    ...(maxCachedKeys === undefined ? {} : { maxCachedKeys }),
    ...(minGetRecordsIntervalMs === undefined ? {} : { minGetRecordsIntervalMs }),
  };
}

/**
 * The whole number >= `min` in variable `name` (`unit`: what it counts, if anything); undefined
 * when the variable is unset or empty.
 */
function wholeNumber(
  env: NodeJS.ProcessEnv,
  name: string,
  unit: string | undefined,
  min: number,
): number | undefined {
  const value = env[name];
  if (value === undefined || value === '') return undefined;
  // Number(' ') is 0: a blank value is a mistake, not zero.
  const n = value.trim() === '' ? Number.NaN : Number(value);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new ConfigurationError(
      `${name} must be a whole number${unit === undefined ? '' : ` of ${unit}`} >= ${min}; received ${describeValue(value)}`,
    );
  }
  return n;
}

function deltaApplyMode(value: string): DeltaApplyMode {
  if (!DELTA_APPLY_MODES.includes(value as DeltaApplyMode)) {
    throw new ConfigurationError(
      `FLOE_DELTA_APPLY must be one of ${DELTA_APPLY_MODES.join(', ')} (DynamoBackendOptions.deltaApply); received ${describeValue(value)}`,
    );
  }
  return value as DeltaApplyMode;
}

export function openAwsJob(
  plan: PipelinePlan,
  config: AwsJobConfig,
  clients: AwsClientsBundle,
): JobRuntime & {
  readonly backend: DynamoBackend;
} {
  const backend = new DynamoBackend({
    dynamodb: clients.dynamodb,
    s3: clients.s3,
    stateTable: config.stateTable,
    controlTable: config.controlTable,
    bucket: config.bucket,
    job: config.job,
    generation: config.generation ?? 0,
    ...(config.deltaApply === undefined ? {} : { deltaApply: config.deltaApply }),
  });
  const fallback = new S3ObjectSink({
    client: clients.s3,
    bucket: config.bucket,
    prefix: `outputs/${config.job}/`,
  });
  const sink = routingSinkFromSpecs(config.sinks, clients, { fallback, requiredSinks: plan.sinks });
  return {
    job: outputJobId(config.job, config.generation ?? 0),
    plan,
    source: new KinesisSource({
      client: clients.kinesis,
      stream: config.stream,
      ...(config.minGetRecordsIntervalMs === undefined
        ? {}
        : { minGetRecordsIntervalMs: config.minGetRecordsIntervalMs }),
    }),
    backend,
    sink,
  };
}
