/** Lambda entry point: takes a savepoint of the job ({"stop": true} stops it afterwards). */
import pipeline from '@floe/pipeline';
import { createSavepointHandler } from '../lib/aws/savepoint-handler.ts';

export const handler = createSavepointHandler({ loadPipeline: async () => pipeline });
