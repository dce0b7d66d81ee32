/**
 * Job ids: a job's id scopes its state, checkpoints, outputs and default resource names. The one
 * definition, pure (no I/O), so that the CLI checks its flags without loading a backend.
 */
import { ConfigurationError, describeValue } from './errors.ts';

const JOB_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** What a job id is, for messages. */
export const JOB_ID_RULE =
  "a job id is 1-100 letters, digits, '.', '_' or '-' starting with a letter or digit";

export function isJobId(value: unknown): value is string {
  return typeof value === 'string' && JOB_ID_PATTERN.test(value);
}

/** `job` if it is a job id, else a ConfigurationError saying what a job id is. */
export function checkJobId(job: unknown): string {
  if (!isJobId(job)) throw new ConfigurationError(`${JOB_ID_RULE}; received ${describeValue(job)}`);
  return job;
}
