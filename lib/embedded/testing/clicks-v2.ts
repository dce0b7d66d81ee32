/** Pipeline module for the savepoint CLI tests (variant v2). */
import { clicksPipeline } from './savepoint-pipelines.ts';

export default clicksPipeline('v2');
