/** Lambda entry point: one invocation works one shard until its time budget ends. */
import { createWorkerHandler, pipelineFromEnv } from '../lib/aws/lambda-handlers.ts';

export const handler = createWorkerHandler({ loadPipeline: pipelineFromEnv });
