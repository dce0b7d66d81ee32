/**
 * `floe savepoint` and `floe replay` on `--backend aws` as child processes: a missing region,
 * missing credentials, an unreachable endpoint and missing resources each give one `floe:` line
 * saying what to fix, before anything is done (as `floe run --backend aws` does).
 */
import { describe, expect, it } from 'vitest';
import { floeCli, NO_CREDENTIALS } from '../aws/floe-cli.ts';
import { setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';

const env = await setupAwsTestEnv();
const floe = floeCli(env);

const NO_REGION = { AWS_REGION: undefined, AWS_DEFAULT_REGION: undefined, AWS_CONFIG_FILE: '/nonexistent' };

function oneLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  return lines[0]!;
}

describe('floe savepoint / replay --backend aws: configuration errors', () => {
  it('says when no region is configured (was: "unexpected error: Region is missing")', () => {
    for (const args of [
      ['savepoint', 'create', '--backend', 'aws', '--job', 'page-views', '--progress', 'none'],
      ['savepoint', 'list', '--backend', 'aws', '--job', 'page-views'],
      ['replay', '--abandon', '--backend', 'aws', '--job', 'page-views'],
    ]) {
      const r = floe(args, NO_REGION);
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(/^floe: no AWS region configured: set AWS_REGION/);
    }
  });

  it('says when no credentials are configured (was: "unexpected error: Could not load credentials")', () => {
    const r = floe(['savepoint', 'create', '--backend', 'aws', '--job', 'page-views'], NO_CREDENTIALS);
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^floe: no AWS credentials found/);
  });

  it('says at once when the endpoint is unreachable (was: 9 retries, then advice about throttling and capacity)', () => {
    const started = Date.now();
    const list = floe(['savepoint', 'list', '--backend', 'aws', '--job', 'page-views'], {
      AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:1',
    });
    const abandon = floe(['replay', '--abandon', '--backend', 'aws', '--job', 'page-views'], {
      AWS_ENDPOINT_URL_DYNAMODB: 'http://127.0.0.1:1',
    });
    for (const r of [list, abandon]) {
      expect(r.code).toBe(1);
      const line = oneLine(r.stderr);
      expect(line).toMatch(/^floe: cannot reach the AWS endpoint \(connect ECONNREFUSED 127\.0\.0\.1:1\)/);
      expect(line).not.toMatch(/throttling|capacity/);
    }
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it('names the missing tables and bucket of the job (was: "unexpected error: Requested resource not found")', () => {
    const job = uniqueName('nojob');
    const replay = floe([
      'replay',
      '--from-timestamp',
      '2026-01-01T00:00:00Z',
      '--pipeline',
      'examples/page-views.ts',
      '--as-job',
      job,
      '--backend',
      'aws',
      '--restore-only',
    ]);
    const create = floe(['savepoint', 'create', '--backend', 'aws', '--job', job, '--progress', 'none']);
    for (const r of [replay, create]) {
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(
        new RegExp(
          `^floe: missing DynamoDB table "floe-${job}-state", DynamoDB table "floe-${job}-control", S3 bucket "floe-${job}" in region us-east-1; pass the job's resources with --state-table, --control-table and --bucket`,
        ),
      );
    }
    const list = floe(['savepoint', 'list', '--backend', 'aws', '--job', job]);
    expect(list.code).toBe(1);
    expect(oneLine(list.stderr)).toMatch(
      new RegExp(`^floe: missing S3 bucket "floe-${job}" in region us-east-1`),
    );
  });
});
