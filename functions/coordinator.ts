/** Lambda entry point (scheduled): starts a worker for every runnable shard nobody holds. */
import pipeline from '@floe/pipeline';
import { createCoordinatorHandler } from '../lib/aws/lambda-handlers.ts';

export const handler = createCoordinatorHandler({ loadPipeline: async () => pipeline });
