// AWS SDK v3 clients for the endpoints of an AwsTestEnv; no Vitest import, so bench/ builds its clients here too.
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KinesisClient } from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { AwsTestEnv } from './types.ts';

export const DUMMY_CREDENTIALS = { accessKeyId: 'test', secretAccessKey: 'test' } as const;

export interface ClientOptions {
  /** The HTTP handler's request timeout. @default 30_000 */
  readonly requestTimeoutMs?: number;
}

type Service = keyof AwsTestEnv['endpoints'];

function baseConfig(env: AwsTestEnv, service: Service, options: ClientOptions) {
  const endpoint = env.endpoints[service];
  return {
    region: env.region,
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(env.credentials === 'dummy' ? { credentials: { ...DUMMY_CREDENTIALS } } : {}),
    requestHandler: new NodeHttpHandler({
      connectionTimeout: 5_000,
      requestTimeout: options.requestTimeoutMs ?? 30_000,
    }),
  };
}

export function kinesisClient(env: AwsTestEnv, options: ClientOptions = {}): KinesisClient {
  return new KinesisClient(baseConfig(env, 'kinesis', options));
}

export function dynamoDbClient(env: AwsTestEnv, options: ClientOptions = {}): DynamoDBClient {
  return new DynamoDBClient(baseConfig(env, 'dynamodb', options));
}

export function dynamoDbDocumentClient(env: AwsTestEnv, options: ClientOptions = {}): DynamoDBDocumentClient {
  return DynamoDBDocumentClient.from(dynamoDbClient(env, options), {
    marshallOptions: { removeUndefinedValues: true },
  });
}

export function s3Client(env: AwsTestEnv, options: ClientOptions = {}): S3Client {
  return new S3Client({
    ...baseConfig(env, 's3', options),
    forcePathStyle: env.endpoints.s3 !== undefined,
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

export function awsClients(env: AwsTestEnv, options: ClientOptions = {}): AwsClients {
  const kinesis = kinesisClient(env, options);
  const dynamodb = dynamoDbClient(env, options);
  const ddb = DynamoDBDocumentClient.from(dynamodb, { marshallOptions: { removeUndefinedValues: true } });
  const s3 = s3Client(env, options);
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
