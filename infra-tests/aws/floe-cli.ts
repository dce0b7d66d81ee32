// Runs the floe CLI synchronously against the test environment's AWS endpoints (the CLI tests).
import { spawn, spawnSync } from 'node:child_process';
import { awsProcessEnv } from '../env/aws-clients.ts';
import type { AwsTestEnv } from '../env/types.ts';

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** The test's environment, the endpoints, and `extraEnv` over them (undefined removes a variable). */
function cliEnv(env: AwsTestEnv, extraEnv: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const childEnv: Record<string, string | undefined> = { ...process.env, ...awsProcessEnv(env), ...extraEnv };
  for (const [k, v] of Object.entries(childEnv)) if (v === undefined) delete childEnv[k];
  return childEnv as NodeJS.ProcessEnv;
}

/**
 * A `floe(args, extraEnv)` for `env`: the child gets the test's environment, the endpoints, and
 * `extraEnv` over them (an undefined value removes the variable). 2 minutes at most.
 */
export function floeCli(
  env: AwsTestEnv,
): (args: string[], extraEnv?: Record<string, string | undefined>) => CliResult {
  return (args, extraEnv = {}) => {
    const childEnv = cliEnv(env, extraEnv);
    const result = spawnSync(process.execPath, ['bin/floe.js', ...args], {
      encoding: 'utf8',
      env: childEnv,
      timeout: 120_000,
    });
    return { code: result.status, stdout: result.stdout, stderr: result.stderr };
  };
}

/**
 * As floeCli, but asynchronous: the test's event loop keeps running while the child does (for a
 * proxy in the test process that the child's requests go through, e.g. env/request-log.ts).
 */
export function floeCliAsync(
  env: AwsTestEnv,
): (args: string[], extraEnv?: Record<string, string | undefined>) => Promise<CliResult> {
  return (args, extraEnv = {}) => {
    const childEnv = cliEnv(env, extraEnv);
    const child = spawn(process.execPath, ['bin/floe.js', ...args], {
      env: childEnv,
      timeout: 120_000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => {
      stdout += String(chunk);
    });
    child.stderr.on('data', (chunk) => {
      stderr += String(chunk);
    });
    return new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  };
}

/** Environment overrides that leave the AWS SDK without credentials (for the error message tests). */
export const NO_CREDENTIALS: Record<string, string | undefined> = {
  AWS_ACCESS_KEY_ID: undefined,
  AWS_SECRET_ACCESS_KEY: undefined,
  AWS_PROFILE: 'floe-test-profile-that-does-not-exist',
  AWS_CONFIG_FILE: '/nonexistent',
  AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
};
