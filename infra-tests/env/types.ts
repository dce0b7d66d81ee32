/**
 * What the infra-tests global setup hands to every test file (through Vitest `provide`/`inject`).
 * It must stay structured-clone serializable: plain data only.
 */

/** How the endpoints were obtained. */
export type AwsTestEnvKind =
  /** From AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE> (a running LocalStack, or real AWS). */
  | 'env'
  /** A LocalStack container started through @testcontainers/localstack. */
  | 'localstack'
  /** Local processes: moto_server (DynamoDB, S3) and kinesis-local (Kinesis). */
  | 'local';

/** The engine behind one service; tests use it to gate on known emulator gaps. */
export type AwsEngine = 'kinesis-mock' | 'moto' | 'localstack' | 'external';

export interface AwsTestEnv {
  kind: AwsTestEnvKind;
  /** One line for logs, e.g. "local: moto_server http://127.0.0.1:40001, kinesis-local http://127.0.0.1:40002". */
  description: string;
  region: string;
  /** Endpoint URL per service; `undefined` means the SDK's default (real AWS) endpoint. */
  endpoints: { kinesis?: string; dynamodb?: string; s3?: string };
  engines: { kinesis: AwsEngine; dynamodb: AwsEngine; s3: AwsEngine };
  /** 'dummy': static test credentials; 'default': the SDK's default credential provider chain. */
  credentials: 'dummy' | 'default';
  /** Time the global setup spent making the endpoints ready. */
  startupMs: number;
}

declare module 'vitest' {
  export interface ProvidedContext {
    floeAwsEnv: AwsTestEnv;
  }
}
