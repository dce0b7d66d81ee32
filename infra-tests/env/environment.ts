/**
 * Chooses and starts the AWS test environment (see infra-tests/README.md):
 *   1. AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_{KINESIS,DYNAMODB,S3} set: use them (LocalStack or real AWS);
 *   2. else a container runtime answers: LocalStack via @testcontainers/localstack;
 *   3. else local processes: moto_server (DynamoDB, S3) + kinesis-local (Kinesis).
 * FLOE_INFRA_BACKEND=env|localstack|local forces one choice (auto by default).
 */
import { LocalEmulatorsUnavailable, MOTO_PIP_SPEC, startLocalEmulators } from './local-emulators.ts';
import { containerRuntimeAnswers, startLocalStack } from './localstack.ts';
import type { AwsTestEnv } from './types.ts';

export interface StartedAwsTestEnv {
  env: AwsTestEnv;
  stop(): Promise<void>;
}

type Backend = 'auto' | 'env' | 'localstack' | 'local';

const LOOPBACK = new Set([
  'localhost',
  '127.0.0.1',
  '[::1]',
  'host.docker.internal',
  'localhost.localstack.cloud',
]);

function isLocalUrl(url: string | undefined): boolean {
  if (!url) return false;
  try {
    return LOOPBACK.has(new URL(url).hostname);
  } catch {
    return false;
  }
}

/** The environment described by AWS_ENDPOINT_URL*, or undefined when none of those is set. */
export function envFromVariables(vars: NodeJS.ProcessEnv = process.env): AwsTestEnv | undefined {
  const pick = (service: string) => vars[`AWS_ENDPOINT_URL_${service}`] || vars.AWS_ENDPOINT_URL || undefined;
  const endpoints = { kinesis: pick('KINESIS'), dynamodb: pick('DYNAMODB'), s3: pick('S3') };
  const urls = Object.values(endpoints);
  if (urls.every((u) => u === undefined)) return undefined;
  for (const u of urls) {
    if (u !== undefined && !URL.canParse(u)) throw new Error(`invalid endpoint URL in the environment: ${u}`);
  }
  // Dummy credentials only for an all-local setup without configured credentials; otherwise the SDK chain.
  const hasCredentials = Boolean(
    vars.AWS_ACCESS_KEY_ID || vars.AWS_PROFILE || vars.AWS_WEB_IDENTITY_TOKEN_FILE,
  );
  const allLocal = urls.every(isLocalUrl);
  return {
    kind: 'env',
    description: `env: kinesis=${endpoints.kinesis ?? 'AWS'} dynamodb=${endpoints.dynamodb ?? 'AWS'} s3=${endpoints.s3 ?? 'AWS'}`,
    region: vars.AWS_REGION || vars.AWS_DEFAULT_REGION || 'us-east-1',
    endpoints,
    engines: { kinesis: 'external', dynamodb: 'external', s3: 'external' },
    credentials: allLocal && !hasCredentials ? 'dummy' : 'default',
    startupMs: 0,
  };
}

function backendFromEnv(): Backend {
  const b = (process.env.FLOE_INFRA_BACKEND ?? 'auto').toLowerCase();
  if (b === 'auto' || b === 'env' || b === 'localstack' || b === 'local') return b;
  throw new Error(`FLOE_INFRA_BACKEND must be auto, env, localstack or local (got "${b}")`);
}

export async function startAwsTestEnv(
  repoRoot: string,
  log: (m: string) => void = console.log,
): Promise<StartedAwsTestEnv> {
  const backend = backendFromEnv();
  const noop = async () => {};

  if (backend === 'auto' || backend === 'env') {
    const fromEnv = envFromVariables();
    if (fromEnv) return { env: fromEnv, stop: noop };
    if (backend === 'env') throw new Error('FLOE_INFRA_BACKEND=env but AWS_ENDPOINT_URL* is not set');
  }

  const notes: string[] = ['AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_{KINESIS,DYNAMODB,S3}: not set.'];
  if (backend === 'auto' || backend === 'localstack') {
    const t0 = performance.now();
    if (await containerRuntimeAnswers()) {
      try {
        return await startLocalStack();
      } catch (err) {
        if (backend === 'localstack') throw err;
        log(`[infra-tests] LocalStack did not start (${(err as Error).message}); using local emulators`);
        notes.push(`LocalStack failed: ${(err as Error).message}`);
      }
    } else {
      if (backend === 'localstack')
        throw new Error('FLOE_INFRA_BACKEND=localstack but no container runtime answers');
      notes.push(`No container runtime answered (checked in ${Math.round(performance.now() - t0)} ms).`);
    }
  }

  try {
    return await startLocalEmulators(repoRoot, log);
  } catch (err) {
    if (!(err instanceof LocalEmulatorsUnavailable)) throw err;
    throw new Error(
      [
        'infra-tests need Kinesis, DynamoDB and S3 endpoints and none could be provided.',
        ...notes,
        err.message,
        'Any one of these fixes it:',
        `  - pip install '${MOTO_PIP_SPEC}' (kinesis-local comes from npm install);`,
        '  - a running Docker/Podman (LocalStack is started through testcontainers);',
        '  - AWS_ENDPOINT_URL=http://localhost:4566 pointing at a running LocalStack.',
      ].join('\n'),
    );
  }
}
