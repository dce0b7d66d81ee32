/**
 * Lambda handlers over lib/runtime: a worker per shard, a scheduled coordinator that starts
 * workers, both with structured logs (Powertools Logger); the worker also emits CloudWatch
 * embedded metrics (Powertools Metrics, see worker-metrics.ts). functions/*.ts are thin entry points.
 */

import { Logger } from '@aws-lambda-powertools/logger';
import type { Metrics } from '@aws-lambda-powertools/metrics';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import type { Context } from 'aws-lambda';
import {
  ConfigurationError,
  compile,
  type DeadLetter,
  errorMessage,
  FencedError,
  LeaseUnavailableError,
  type Pipeline,
  type PipelinePlan,
} from '../core/index.ts';
import { coordinateRound, startOfShard } from '../runtime/coordinator.ts';
import { RoutingSink } from '../runtime/routing-sink.ts';
import { taskKeyLimit, WarmTasks } from '../runtime/warm-tasks.ts';
import { emptyWorkerResult, runShardWorker, type WorkerResult } from '../runtime/worker.ts';
import { type AwsClientsBundle, type AwsJobConfig, awsClients, awsJobConfigFromEnv } from './job.ts';
import { openAwsJobFromRecord } from './run-job.ts';
import { WorkerMetrics } from './worker-metrics.ts';

/**
 * A worker invocation's event. A child shard's first checkpoint (inherited from its parents) is
 * not in it: it holds the parents' timers and can exceed the 1 MB an asynchronous invocation
 * takes, so the worker works it out from the shard listing and the checkpoints.
 */
export interface WorkerEvent {
  readonly shardId: string;
}

export interface HandlerDeps {
  readonly loadPipeline: () => Promise<Pipeline>;
  readonly config?: () => AwsJobConfig;
  readonly clients?: () => AwsClientsBundle;
  readonly logger?: Logger;
  /** Worker metrics sink. @default - Powertools Metrics in namespace POWERTOOLS_METRICS_NAMESPACE (else 'Floe') */
  readonly metrics?: Metrics;
}

/** Time kept back from the Lambda timeout to commit the last batch and release the lease. */
export const SAFETY_MARGIN_MS = 10_000;

export function createWorkerHandler(deps: HandlerDeps) {
  const logger = deps.logger ?? new Logger({ serviceName: 'floe-worker' });
  // A warm container keeps its shard tasks (and their cached state) for its next invocations;
  // a kept task is only reused for the plan it was built with, so the plan is compiled once.
  let warmTasks: WarmTasks | undefined;
  let compiled: PipelinePlan | undefined;
  return async (
    event: WorkerEvent,
    context: Pick<Context, 'awsRequestId' | 'getRemainingTimeInMillis'>,
  ): Promise<WorkerResult> => {
    if (typeof event?.shardId !== 'string') {
      throw new ConfigurationError(
        `the worker expects {"shardId": "..."}; received ${JSON.stringify(event)}`,
      );
    }
    const config = (deps.config ?? awsJobConfigFromEnv)();
    compiled ??= compile(await deps.loadPipeline());
    const plan = compiled;
    // A container may run any shard of the job, one at a time: the tasks it keeps together cache
    // at most what one invocation may (maxCachedKeys per keyed operator), so its memory stays
    // within twice one invocation's state however many shards it has served.
    if (warmTasks === undefined) {
      const keys = taskKeyLimit(plan, config.maxCachedKeys);
      warmTasks = new WarmTasks({ maxKeys: keys, maxTotalKeys: keys });
    }
    const clients = (deps.clients ?? awsClients)();
    logger.appendKeys({ job: config.job, shardId: event.shardId });
    const metrics = new WorkerMetrics({
      job: config.job,
      plan,
      ...(deps.metrics === undefined ? {} : { metrics: deps.metrics }),
    });
    let result: WorkerResult | undefined;
    // Published commits, for the result of an invocation another one supersedes.
    let commits = 0;
    let records = 0;
    try {
      // The job record names the generation to run; a stopped or pausing job does not run.
      const opened = await openAwsJobFromRecord(plan, config, clients);
      if (opened.runtime === undefined) {
        logger.info('worker not started', { reason: opened.reason });
        result = { ...emptyWorkerResult(event.shardId), paused: true };
        return result;
      }
      const job = metrics.instrument(opened.runtime);
      if (job.sink instanceof RoutingSink) {
        job.sink.onRejected((deadLetters) => {
          logger.warn('outputs dead-lettered: their sink cannot take them', {
            count: deadLetters.length,
            // The first few: the values may be large (all are in the dead-letter sink).
            outputs: deadLetters.slice(0, 10).map((d) => {
              const { sink, message } = d.value as DeadLetter;
              return { id: d.id, sink, message };
            }),
          });
        });
      }
      result = await runShardWorker(job, event.shardId, {
        owner: context.awsRequestId,
        // The shard's first run: a child of a reshard inherits its parents' checkpoint, and may
        // run only once they are finished (the coordinator checks; a manual invocation may not).
        // Worked out by the worker under the lease, only when the checkpoint it reads there is
        // missing: the shard's checkpoint is read once per invocation, after the lease.
        startOfShard: () => startOfShard(job, event.shardId),
        timeBudgetMs: Math.max(1_000, context.getRemainingTimeInMillis() - SAFETY_MARGIN_MS),
        warmTasks,
        ...(config.commitIntervalMs === undefined ? {} : { commitIntervalMs: config.commitIntervalMs }),
        ...(config.maxCachedKeys === undefined ? {} : { maxCachedKeys: config.maxCachedKeys }),
        onCheckedRetry: (error) => {
          logger.warn(
            'processing the uncommitted records again from the last commit in the checked pass, which dead-letters exactly the records that produce a value DynamoDB cannot store (not JSON, or a state entry over the item size limit) or that failed after reading state objects',
            { error: error.name, message: error.message },
          );
        },
        onCommit: (p) => {
          commits++;
          records += p.records;
          metrics.onCommit(p);
          logger.debug('commit', {
            commitNumber: p.commitNumber,
            records: p.records,
            outputs: p.outputs,
            deadLetters: p.deadLetters,
            watermark: Number.isFinite(p.watermark) ? p.watermark : String(p.watermark),
            millisBehindLatest: p.millisBehindLatest,
          });
        },
      });
      if (result.notStarted) {
        logger.warn('worker not started', {
          reason:
            'the shard is not in the stream, or a parent shard has not finished yet or not published its last outputs',
        });
        return result;
      }
      logger.info('worker finished', { ...result });
      return result;
    } catch (error) {
      if (error instanceof FencedError || error instanceof LeaseUnavailableError) {
        // Another invocation holds the shard: one started at the same time, or one took the
        // shard over while this one stalled. Nothing is lost (the holder goes on from the last
        // commit and publishes its outbox), so this is not a failed invocation.
        const superseded = error instanceof FencedError ? 'fenced' : 'lease-unavailable';
        logger.warn('worker superseded', { superseded, message: error.message, commits, records });
        result = { ...emptyWorkerResult(event.shardId), records, commits, superseded };
        return result;
      }
      logger.error('worker failed', error as Error);
      throw error;
    } finally {
      metrics.finish(result);
      clients.destroy();
    }
  };
}

export interface CoordinatorDepsAws extends HandlerDeps {
  /** Starts a worker; default: asynchronous invocation of FLOE_WORKER_FUNCTION. */
  readonly startWorker?: (event: WorkerEvent) => Promise<void>;
}

export function createCoordinatorHandler(deps: CoordinatorDepsAws) {
  const logger = deps.logger ?? new Logger({ serviceName: 'floe-coordinator' });
  return async (): Promise<{ started: string[]; running: string[]; finished: string[] }> => {
    const config = (deps.config ?? awsJobConfigFromEnv)();
    const plan = compile(await deps.loadPipeline());
    const clients = (deps.clients ?? awsClients)();
    logger.appendKeys({ job: config.job });
    const lambda = deps.startWorker === undefined ? new LambdaClient({}) : undefined;
    const startWorker =
      deps.startWorker ??
      (async (event: WorkerEvent): Promise<void> => {
        const fn = process.env.FLOE_WORKER_FUNCTION;
        if (fn === undefined) throw new ConfigurationError('FLOE_WORKER_FUNCTION is not set');
        await lambda!.send(
          new InvokeCommand({ FunctionName: fn, InvocationType: 'Event', Payload: JSON.stringify(event) }),
        );
      });
    try {
      const opened = await openAwsJobFromRecord(plan, config, clients);
      if (opened.runtime === undefined) {
        logger.info('coordinator round skipped', { reason: opened.reason });
        return { started: [], running: [], finished: [] };
      }
      const job = opened.runtime;
      const now = Date.now();
      const { failed, ...result } = await coordinateRound(job, {
        isLeaseLive: async (shardId) => ((await job.backend.leaseInfo(shardId))?.expiresAt ?? 0) > now,
        startWorker: (shardId) => startWorker({ shardId }),
      });
      logger.info('coordinator round', result);
      if (failed.length > 0) {
        // The other shards' workers were started; failing the round counts it in CoordinatorErrors.
        for (const f of failed)
          logger.error('worker not started', { shardId: f.shardId, error: f.error as Error });
        throw new AggregateError(
          failed.map((f) => f.error),
          `the coordinator could not start the worker of ${failed.length} shard(s): ${failed.map((f) => `${f.shardId} (${errorMessage(f.error)})`).join(', ')}`,
        );
      }
      return result;
    } finally {
      clients.destroy();
      lambda?.destroy();
    }
  };
}

/** Loads the pipeline module named by FLOE_PIPELINE_MODULE (a path or a bundled module id). */
export async function pipelineFromEnv(): Promise<Pipeline> {
  const module = process.env.FLOE_PIPELINE_MODULE;
  if (module === undefined) throw new ConfigurationError('FLOE_PIPELINE_MODULE is not set');
  const loaded = (await import(module)) as { default?: Pipeline };
  if (loaded.default === undefined) throw new ConfigurationError(`${module} has no default export`);
  return loaded.default;
}
