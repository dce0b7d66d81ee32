/**
 * Vitest globalSetup for the infra-tests project: starts the AWS test environment once per run and
 * provides it to every test file as `inject('floeAwsEnv')` (see ./aws-clients.ts). The environment is
 * stopped after the run. It runs only when an infra-tests file is part of the run, because it is
 * attached to the infra-tests Vitest project only (see infra-tests/README.md).
 */
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { startAwsTestEnv } from './environment.ts';
import './types.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = await startAwsTestEnv(repoRoot);
  const { env } = started;
  console.log(`[infra-tests] ${env.description} (ready in ${env.startupMs} ms)`);
  project.provide('floeAwsEnv', env);
  return async () => {
    const t0 = performance.now();
    await started.stop();
    if (env.kind !== 'env') console.log(`[infra-tests] stopped in ${Math.round(performance.now() - t0)} ms`);
  };
}
