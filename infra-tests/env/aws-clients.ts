/**
 * AWS SDK v3 clients for infra tests, built from the environment that the global setup provides
 * (the clients themselves are made in ./sdk-clients.ts, which bench/ uses without Vitest):
 *
 *   const env = awsTestEnv();            // inject('floeAwsEnv')
 *   const kinesis = kinesisClient(env);  // or awsClients(env) for all of them
 *
 * Kinesis uses NodeHttpHandler (HTTP/1.1): the SDK's Kinesis client defaults to HTTP/2, which the
 * emulators do not speak. S3 uses path-style addressing against a custom endpoint. Against emulators the
 * credentials are dummies and the region is us-east-1.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, inject } from 'vitest';
import { DUMMY_CREDENTIALS } from './sdk-clients.ts';
import type { AwsTestEnv } from './types.ts';

export {
  type AwsClients,
  awsClients,
  type ClientOptions,
  DUMMY_CREDENTIALS,
  dynamoDbClient,
  dynamoDbDocumentClient,
  kinesisClient,
  s3Client,
} from './sdk-clients.ts';
export type { AwsTestEnv } from './types.ts';

/** The environment provided by infra-tests/env/global-setup.ts (throws if there is none). */
export function awsTestEnv(): AwsTestEnv {
  const env = inject('floeAwsEnv');
  if (!env) {
    throw new Error(
      'floeAwsEnv was not provided: run infra tests through the infra-tests Vitest project, whose globalSetup is infra-tests/env/global-setup.ts',
    );
  }
  return env;
}

/**
 * For the top level of an infra test file: `const env = await setupAwsTestEnv();`.
 * Returns the environment provided by the global setup; when the file runs under a Vitest config without
 * that globalSetup, it starts an environment for this file alone (stopped in afterAll) and says so.
 */
export async function setupAwsTestEnv(): Promise<AwsTestEnv> {
  const provided = inject('floeAwsEnv');
  if (provided) return provided;
  const { startAwsTestEnv } = await import('./environment.ts');
  const { fileURLToPath } = await import('node:url');
  const started = await startAwsTestEnv(fileURLToPath(new URL('../..', import.meta.url)));
  console.warn(
    `[infra-tests] no globalSetup provided floeAwsEnv; started one for this file: ${started.env.description} ` +
      `(${started.env.startupMs} ms). Configure infra-tests/env/global-setup.ts to share one per run.`,
  );
  afterAll(() => started.stop());
  return started.env;
}

/**
 * Environment variables that point an AWS SDK in a child process (e.g. the `floe` CLI) at the same
 * endpoints: AWS_ENDPOINT_URL_<SERVICE>, AWS_REGION and, for emulators, dummy credentials.
 */
export function awsProcessEnv(env: AwsTestEnv = awsTestEnv()): Record<string, string> {
  const vars: Record<string, string> = { AWS_REGION: env.region };
  if (env.endpoints.kinesis) vars.AWS_ENDPOINT_URL_KINESIS = env.endpoints.kinesis;
  if (env.endpoints.dynamodb) vars.AWS_ENDPOINT_URL_DYNAMODB = env.endpoints.dynamodb;
  if (env.endpoints.s3) vars.AWS_ENDPOINT_URL_S3 = env.endpoints.s3;
  if (env.credentials === 'dummy') {
    vars.AWS_ACCESS_KEY_ID = DUMMY_CREDENTIALS.accessKeyId;
    vars.AWS_SECRET_ACCESS_KEY = DUMMY_CREDENTIALS.secretAccessKey;
  }
  return vars;
}

/**
 * A resource name unique to this run and test, valid for Kinesis streams, DynamoDB tables and S3 buckets
 * (lowercase, digits, hyphens; <= 63 chars). Test files run in parallel against one shared environment,
 * so every test should create its own resources.
 */
export function uniqueName(prefix: string): string {
  const clean = prefix
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .slice(0, 40);
  return `${clean}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}
