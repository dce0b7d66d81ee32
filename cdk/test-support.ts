/** Helpers for the CDK tests: an App configured like cdk.json, with or without bundling. */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { App, type AppProps } from 'aws-cdk-lib';
import { afterAll } from 'vitest';
import { FLOE_ROOT } from './stream-processor.ts';

// An App without an outdir synthesizes into a fresh `cdk.out*` directory under the system temp
// directory and never removes it: about 5 MB of bundled assets per synthesized test stack.
const tmpDirs: string[] = [];
afterAll(() => {
  for (const dir of tmpDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory under the system temp directory, removed after the test file. */
export function tmpOutdir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'floe-cdk-test-'));
  tmpDirs.push(dir);
  return dir;
}

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
 * @default outdir a fresh directory removed after the test file
 */
export function testApp(options: { bundle?: boolean; outdir?: string } & AppProps = {}): App {
  const { bundle = false, context, outdir = tmpOutdir(), ...rest } = options;
  return new App({
    ...rest,
    outdir,
    context: {
      ...cdkJsonContext(),
      ...(bundle ? {} : { 'aws:cdk:bundling-stacks': [] }),
      ...context,
    },
  });
}
