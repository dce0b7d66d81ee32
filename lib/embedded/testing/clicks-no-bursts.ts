/** Pipeline module for the savepoint CLI tests (variant no-bursts). */
import { clicksPipeline } from './savepoint-pipelines.ts';

export default clicksPipeline('no-bursts');
