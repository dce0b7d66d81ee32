/**
 * LocalStack through @testcontainers/localstack, used only where a container runtime answers.
 * (No container runtime exists on the development and CI machines, so this path is not exercised there.)
 */
import { existsSync } from 'node:fs';
import { homedir, userInfo } from 'node:os';
import path from 'node:path';
import type { AwsTestEnv } from './types.ts';

/**
 * Pinned image. 4.14.0 is the last community tag that starts without LOCALSTACK_AUTH_TOKEN (later
 * images require an account); override with FLOE_LOCALSTACK_IMAGE. LOCALSTACK_AUTH_TOKEN is passed on if set.
 */
export const LOCALSTACK_IMAGE = 'localstack/localstack:4.14.0';

/**
 * Cheap pre-check before importing testcontainers (~1 s to load): is any container runtime configured
 * or does any socket that testcontainers would probe exist?
 */
export function containerRuntimeHinted(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.DOCKER_HOST) return true;
  const home = homedir();
  const candidates = [
    path.join(home, '.testcontainers.properties'),
    '/var/run/docker.sock',
    env.XDG_RUNTIME_DIR ? path.join(env.XDG_RUNTIME_DIR, 'docker.sock') : undefined,
    path.join(home, '.docker', 'run', 'docker.sock'),
    path.join(home, '.docker', 'desktop', 'docker.sock'),
    path.join('/run', 'user', String(userInfo().uid), 'docker.sock'),
  ];
  return candidates.some((c) => c !== undefined && existsSync(c));
}

/** True when testcontainers finds a container runtime that answers within `timeoutMs`. */
export async function containerRuntimeAnswers(timeoutMs = 4_000): Promise<boolean> {
  if (!containerRuntimeHinted()) return false;
  const { getContainerRuntimeClient } = await import('testcontainers');
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
    timer.unref();
  });
  try {
    return await Promise.race([getContainerRuntimeClient().then(() => true), timeout]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export async function startLocalStack(): Promise<{ env: AwsTestEnv; stop(): Promise<void> }> {
  const t0 = performance.now();
  const { LocalstackContainer } = await import('@testcontainers/localstack');
  const image = process.env.FLOE_LOCALSTACK_IMAGE ?? LOCALSTACK_IMAGE;
  let container = new LocalstackContainer(image);
  const token = process.env.LOCALSTACK_AUTH_TOKEN;
  if (token) container = container.withEnvironment({ LOCALSTACK_AUTH_TOKEN: token });
  const started = await container.start();
  const url = started.getConnectionUri();
  return {
    env: {
      kind: 'localstack',
      description: `localstack: ${image} at ${url}`,
      region: 'us-east-1',
      endpoints: { kinesis: url, dynamodb: url, s3: url },
      engines: { kinesis: 'localstack', dynamodb: 'localstack', s3: 'localstack' },
      credentials: 'dummy',
      startupMs: Math.round(performance.now() - t0),
    },
    stop: async () => {
      await started.stop();
    },
  };
}
