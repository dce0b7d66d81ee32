/**
 * The CDK app: `npx cdk deploy` (see docs/operations.md). Context (-c key=value):
 *   floe:stackName      stack name (default FloePageViews)
 *   floe:streamName     read this existing stream instead of defining one
 *   floe:removalPolicy  'destroy' to delete tables, stream, buckets and logs with the stack
 * The cdk-nag AwsSolutions pack runs on every synth; a finding fails the synth.
 */
import { App, RemovalPolicy, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { PageViewsStack } from './page-views-stack.ts';

const app = new App();
const context = (key: string): string | undefined => {
  const value: unknown = app.node.tryGetContext(key);
  return value === undefined || value === null || value === '' ? undefined : String(value);
};
const removal = context('floe:removalPolicy');
if (removal !== undefined && removal !== 'destroy' && removal !== 'retain') {
  throw new Error(`floe:removalPolicy must be 'destroy' or 'retain', got ${JSON.stringify(removal)}`);
}
const streamName = context('floe:streamName');
new PageViewsStack(app, context('floe:stackName') ?? 'FloePageViews', {
  ...(streamName !== undefined ? { existingStreamName: streamName } : {}),
  ...(removal === 'destroy' ? { removalPolicy: RemovalPolicy.DESTROY } : {}),
});
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
