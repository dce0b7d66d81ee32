/** Pipeline module for the savepoint CLI tests (variant session). */
import { clicksPipeline } from './savepoint-pipelines.ts';

export default clicksPipeline('session');
