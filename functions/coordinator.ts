/** Lambda entry point (scheduled): starts a worker for every runnable shard nobody holds. */
import { createCoordinatorHandler, pipelineFromEnv } from '../lib/aws/lambda-handlers.ts';

export const handler = createCoordinatorHandler({ loadPipeline: pipelineFromEnv });
