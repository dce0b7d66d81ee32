/** Helpers for the CDK tests: an App configured like cdk.json, with or without bundling. */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { App, type AppProps } from 'aws-cdk-lib';
import { FLOE_ROOT } from './stream-processor.ts';

/** The `context` of cdk.json (feature flags), so tests synthesize what `cdk synth` does. */
export function cdkJsonContext(): Record<string, unknown> {
  const json = JSON.parse(readFileSync(resolve(FLOE_ROOT, 'cdk.json'), 'utf8')) as {
    context?: Record<string, unknown>;
  };
  return json.context ?? {};
}

/**
 * An App with cdk.json's context. `bundle: false` skips esbuild (the CLI's
 * `aws:cdk:bundling-stacks` context), for tests that only read the template.
 */
export function testApp(options: { bundle?: boolean; outdir?: string } & AppProps = {}): App {
  const { bundle = false, context, ...rest } = options;
  return new App({
    ...rest,
    context: {
      ...cdkJsonContext(),
      ...(bundle ? {} : { 'aws:cdk:bundling-stacks': [] }),
      ...context,
    },
  });
}
