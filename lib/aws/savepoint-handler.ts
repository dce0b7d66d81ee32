/**
 * The savepoint Lambda handler: takes a savepoint of the function's job (stop-with-savepoint
 * with `{"stop": true}`) and writes it to S3 (FLOE_SAVEPOINT_URL, default
 * s3://<FLOE_BUCKET>/savepoints/). A timed-out invocation is safe: invoke it again and it
 * completes the interrupted savepoint (same id).
 */
import { Logger } from '@aws-lambda-powertools/logger';
import type { Context } from 'aws-lambda';
import { ConfigurationError, compile, operatorSchemas, type Pipeline } from '../core/index.ts';
import { createSavepoint } from '../runtime/savepoints.ts';
import { type AwsClientsBundle, type AwsJobConfig, awsClients, awsJobConfigFromEnv } from './job.ts';
import { awsSavepointBackend } from './savepoints.ts';
import { parseS3Url, S3SnapshotStore } from './snapshot-s3.ts';

export interface SavepointEvent {
  /** Stop the job after the savepoint. @default false */
  readonly stop?: boolean;
  /** Savepoint id. @default `<job>-<UTC time>-<4 hex>` (or the interrupted savepoint's) */
  readonly id?: string;
}

export interface SavepointResult {
  readonly id: string;
  readonly location: string;
  readonly entries: number;
  readonly files: number;
  readonly shards: number;
  readonly stopped: boolean;
}

export interface SavepointHandlerDeps {
  readonly loadPipeline?: () => Promise<Pipeline>;
  readonly config?: () => AwsJobConfig;
  readonly clients?: () => AwsClientsBundle;
  readonly logger?: Logger;
  readonly env?: NodeJS.ProcessEnv;
}

/** Time kept back from the Lambda timeout. */
const MARGIN_MS = 15_000;

export function createSavepointHandler(deps: SavepointHandlerDeps = {}) {
  const logger = deps.logger ?? new Logger({ serviceName: 'floe-savepoint' });
  return async (
    event: SavepointEvent | undefined,
    context: Pick<Context, 'getRemainingTimeInMillis'>,
  ): Promise<SavepointResult> => {
    if (event?.stop !== undefined && typeof event.stop !== 'boolean') {
      throw new ConfigurationError(
        `the savepoint function expects {"stop"?: boolean, "id"?: string}; received ${JSON.stringify(event)}`,
      );
    }
    const env = deps.env ?? process.env;
    const config = (deps.config ?? (() => awsJobConfigFromEnv(env)))();
    const plan = deps.loadPipeline === undefined ? undefined : compile(await deps.loadPipeline());
    const clients = (deps.clients ?? (() => awsClients(env)))();
    logger.appendKeys({ job: config.job });
    try {
      const url = env.FLOE_SAVEPOINT_URL;
      const savepoints =
        url === undefined || url === ''
          ? new S3SnapshotStore(clients.s3, config.bucket)
          : (() => {
              const { bucket, prefix } = parseS3Url(url);
              return new S3SnapshotStore(clients.s3, bucket, prefix);
            })();
      const backend = awsSavepointBackend({
        clients,
        stateTable: config.stateTable,
        controlTable: config.controlTable,
        bucket: config.bucket,
        savepoints,
      });
      let lastLog = 0;
      const manifest = await createSavepoint(backend, {
        job: config.job,
        stream: config.stream,
        ...(config.generation === undefined ? {} : { generation: config.generation }),
        stop: event?.stop === true,
        ...(event?.id === undefined ? {} : { id: event.id }),
        ...(plan === undefined
          ? {}
          : { pipeline: { name: plan.name, version: plan.version }, operators: operatorSchemas(plan) }),
        timeoutMs: Math.max(5_000, context.getRemainingTimeInMillis() - MARGIN_MS - 30_000),
        onProgress: (p) => {
          if (Date.now() - lastLog < 5_000) return;
          lastLog = Date.now();
          logger.info('savepoint progress', { ...p });
        },
      });
      const result: SavepointResult = {
        id: manifest.id,
        location: savepoints.describe(manifest.id),
        entries: manifest.entries,
        files: manifest.files.length,
        shards: manifest.shards.length,
        stopped: manifest.stopped,
      };
      logger.info('savepoint taken', { ...result });
      return result;
    } catch (error) {
      logger.error('savepoint failed', error as Error);
      throw error;
    } finally {
      clients.destroy();
    }
  };
}
