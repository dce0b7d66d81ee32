/** Lambda entry point: one invocation works one shard until its time budget ends. */
import pipeline from '@floe/pipeline';
import { createWorkerHandler } from '../lib/aws/lambda-handlers.ts';

export const handler = createWorkerHandler({ loadPipeline: async () => pipeline });
