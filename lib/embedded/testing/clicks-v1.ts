/** Pipeline module for the savepoint CLI tests (variant v1). */
import { clicksPipeline } from './savepoint-pipelines.ts';

export default clicksPipeline('v1');
