/**
 * AWS SDK v3 clients for infra tests, built from the environment that the global setup provides:
 *
 *   const env = awsTestEnv();            // inject('floeAwsEnv')
 *   const kinesis = kinesisClient(env);  // or awsClients(env) for all of them
 *
 * Kinesis uses NodeHttpHandler (HTTP/1.1): the SDK's Kinesis client defaults to HTTP/2, which the
 * emulators do not speak. S3 uses path-style addressing against a custom endpoint. Against emulators the
 * credentials are dummies and the region is us-east-1.
 */
import { randomBytes } from 'node:crypto';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KinesisClient } from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { afterAll, inject } from 'vitest';
import type { AwsTestEnv } from './types.ts';

export type { AwsTestEnv } from './types.ts';

export const DUMMY_CREDENTIALS = { accessKeyId: 'test', secretAccessKey: 'test' } as const;

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

type Service = keyof AwsTestEnv['endpoints'];

function baseConfig(env: AwsTestEnv, service: Service) {
  const endpoint = env.endpoints[service];
  return {
    region: env.region,
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(env.credentials === 'dummy' ? { credentials: { ...DUMMY_CREDENTIALS } } : {}),
  };
}

function httpHandler(): NodeHttpHandler {
  return new NodeHttpHandler({ connectionTimeout: 5_000, requestTimeout: 30_000 });
}

export function kinesisClient(env: AwsTestEnv = awsTestEnv()): KinesisClient {
  return new KinesisClient({ ...baseConfig(env, 'kinesis'), requestHandler: httpHandler() });
}

export function dynamoDbClient(env: AwsTestEnv = awsTestEnv()): DynamoDBClient {
  return new DynamoDBClient({ ...baseConfig(env, 'dynamodb'), requestHandler: httpHandler() });
}

export function dynamoDbDocumentClient(env: AwsTestEnv = awsTestEnv()): DynamoDBDocumentClient {
  return DynamoDBDocumentClient.from(dynamoDbClient(env), {
    marshallOptions: { removeUndefinedValues: true },
  });
}

export function s3Client(env: AwsTestEnv = awsTestEnv()): S3Client {
  return new S3Client({
    ...baseConfig(env, 's3'),
    forcePathStyle: env.endpoints.s3 !== undefined,
    requestHandler: httpHandler(),
  });
}

export interface AwsClients {
  kinesis: KinesisClient;
  dynamodb: DynamoDBClient;
  /** Document client over `dynamodb` (destroyed with it). */
  ddb: DynamoDBDocumentClient;
  s3: S3Client;
  destroy(): void;
}

export function awsClients(env: AwsTestEnv = awsTestEnv()): AwsClients {
  const kinesis = kinesisClient(env);
  const dynamodb = dynamoDbClient(env);
  const ddb = DynamoDBDocumentClient.from(dynamodb, { marshallOptions: { removeUndefinedValues: true } });
  const s3 = s3Client(env);
  return {
    kinesis,
    dynamodb,
    ddb,
    s3,
    destroy() {
      kinesis.destroy();
      dynamodb.destroy();
      s3.destroy();
    },
  };
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
