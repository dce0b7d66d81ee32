/**
 * Local emulators without a container runtime: `moto_server` (DynamoDB and S3, one server for all
 * services) and the npm package `kinesis-local` (kinesis-mock, the Kinesis engine LocalStack uses),
 * each on a free loopback port, over plain HTTP.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AwsTestEnv } from './types.ts';

/** The moto version installed into `.venv` when `moto_server` is not on PATH. */
export const MOTO_PIP_SPEC = 'moto[server]==5.2.1';

const HOST = '127.0.0.1';
const READY_TIMEOUT_MS = 30_000;

export interface StartedLocalEmulators {
  env: AwsTestEnv;
  stop(): Promise<void>;
}

/** Thrown when the local emulators cannot run here; the message says what to install. */
export class LocalEmulatorsUnavailable extends Error {
  override name = 'LocalEmulatorsUnavailable';
}

// ---------------------------------------------------------------------------------------------
// Processes

const running = new Set<ManagedProcess>();
let exitHookInstalled = false;

/** Last resort: never leave emulators behind when the test process exits without teardown. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of running) p.killNow();
  });
}

class ManagedProcess {
  private tail = '';
  private exitInfo: string | undefined;
  readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    /** Time allowed to exit after SIGTERM; 0 sends SIGKILL at once. */
    private readonly stopGraceMs: number,
  ) {
    const keep = (chunk: Buffer) => {
      this.tail = (this.tail + chunk.toString('utf8')).slice(-4000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise<void>((resolve) => {
      child.once('error', (err) => {
        this.exitInfo ??= `failed to start: ${err.message}`;
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.exitInfo ??= `exited with ${signal ?? `code ${code}`}`;
        resolve();
      });
    });
    running.add(this);
    void this.exited.then(() => running.delete(this));
  }

  get hasExited(): boolean {
    return this.exitInfo !== undefined;
  }

  describeExit(): string {
    const out = this.tail.trim();
    return `${this.name} ${this.exitInfo ?? 'did not become ready'}${out ? `; last output:\n${out}` : ''}`;
  }

  private signal(sig: NodeJS.Signals): void {
    const pid = this.child.pid;
    if (pid === undefined || this.hasExited) return;
    try {
      process.kill(-pid, sig); // the whole process group (spawned detached)
    } catch {
      try {
        this.child.kill(sig);
      } catch {
        // already gone
      }
    }
  }

  killNow(): void {
    this.signal('SIGKILL');
  }

  async stop(): Promise<void> {
    if (this.hasExited) return;
    if (this.stopGraceMs === 0) {
      this.signal('SIGKILL');
      await this.exited;
      return;
    }
    this.signal('SIGTERM');
    const timedOut = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((r) => setTimeout(() => r(true), this.stopGraceMs).unref()),
    ]);
    if (timedOut) {
      this.signal('SIGKILL');
      await this.exited;
    }
  }
}

function startProcess(
  name: string,
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  stopGraceMs: number,
): ManagedProcess {
  installExitHook();
  const child = spawn(command, args, {
    env,
    cwd: tmpdir(),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // own process group, so stop() also reaches wrapper-spawned children
  });
  return new ManagedProcess(name, child, stopGraceMs);
}

async function waitUntilReady(proc: ManagedProcess, url: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (proc.hasExited) throw new Error(proc.describeExit());
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await proc.stop();
  throw new Error(`${proc.describeExit()} (no answer from ${url} within ${READY_TIMEOUT_MS} ms)`);
}

/** Distinct free loopback ports (all held open together, so they cannot collide with each other). */
async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      ports.push(
        await new Promise<number>((resolve, reject) => {
          server.once('error', reject);
          server.listen(0, HOST, () => {
            const addr = server.address();
            if (addr && typeof addr === 'object') resolve(addr.port);
            else reject(new Error('no port'));
          });
        }),
      );
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

// ---------------------------------------------------------------------------------------------
// kinesis-local

function kinesisLocalDir(): string {
  try {
    return path.dirname(createRequire(import.meta.url).resolve('kinesis-local/package.json'));
  } catch {
    throw new LocalEmulatorsUnavailable(
      'the npm package kinesis-local is not installed: run `npm install` (it is a devDependency of this repo).',
    );
  }
}

async function startKinesisLocal(): Promise<{ url: string; proc: ManagedProcess }> {
  const dir = kinesisLocalDir();
  const [plainPort, tlsPort] = (await freePorts(2)) as [number, number];
  const fast = '100ms'; // control-plane delays (default 500ms; AWS takes seconds, so tests must poll anyway)
  const proc = startProcess(
    'kinesis-local',
    process.execPath,
    [path.join(dir, 'main.js')],
    {
      ...process.env,
      KINESIS_MOCK_CERT_PATH: path.join(dir, 'server.json'), // without it, it looks for ./server.json and dies
      KINESIS_MOCK_PLAIN_PORT: String(plainPort), // plain HTTP: no self-signed TLS in the tests
      KINESIS_MOCK_TLS_PORT: String(tlsPort), // always opened; keep it off the default 4567
      AWS_REGION: 'us-east-1',
      LOG_LEVEL: 'WARN',
      SHOULD_PERSIST_DATA: 'false',
      SHARD_LIMIT: '1000',
      ON_DEMAND_STREAM_COUNT_LIMIT: '100',
      CREATE_STREAM_DURATION: fast,
      DELETE_STREAM_DURATION: fast,
      SPLIT_SHARD_DURATION: fast,
      MERGE_SHARDS_DURATION: fast,
      UPDATE_SHARD_COUNT_DURATION: fast,
      UPDATE_STREAM_MODE_DURATION: fast,
      REGISTER_STREAM_CONSUMER_DURATION: fast,
      DEREGISTER_STREAM_CONSUMER_DURATION: fast,
      START_STREAM_ENCRYPTION_DURATION: fast,
      STOP_STREAM_ENCRYPTION_DURATION: fast,
    },
    0, // stop with SIGKILL: its graceful shutdown takes ~4 s and it persists nothing
  );
  const url = `http://${HOST}:${plainPort}`;
  await waitUntilReady(proc, `${url}/healthcheck`);
  return { url, proc };
}

// ---------------------------------------------------------------------------------------------
// moto_server

function findExecutable(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function runToEnd(command: string, args: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let out = '';
    const keep = (c: Buffer) => {
      out = (out + c.toString('utf8')).slice(-3000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else
        reject(new Error(`\`${command} ${args.join(' ')}\` ${signal ?? `exited ${code}`}:\n${out.trim()}`));
    });
  });
}

/** Creates `<repo>/.venv` and pip-installs the pinned moto into it; returns its moto_server. */
async function installMotoIntoVenv(repoRoot: string, log: (m: string) => void): Promise<string> {
  const venv = path.join(repoRoot, '.venv');
  const motoServer = path.join(venv, 'bin', 'moto_server');
  const venvPython = path.join(venv, 'bin', 'python');
  const python = findExecutable('python3') ?? findExecutable('python');
  if (!existsSync(venvPython)) {
    if (!python) throw new Error('no python3 on PATH to create .venv');
    log(`[infra-tests] moto_server not found; creating ${venv} and installing ${MOTO_PIP_SPEC} ...`);
    await runToEnd(python, ['-m', 'venv', venv], 120_000);
  } else {
    log(`[infra-tests] installing ${MOTO_PIP_SPEC} into ${venv} ...`);
  }
  await runToEnd(
    venvPython,
    [
      '-m',
      'pip',
      'install',
      '--disable-pip-version-check',
      '--timeout',
      '15',
      '--retries',
      '1',
      MOTO_PIP_SPEC,
    ],
    300_000,
  );
  if (!existsSync(motoServer)) throw new Error(`pip finished but ${motoServer} does not exist`);
  return motoServer;
}

/** infra-tests/env/moto-server.py: moto_server without its instance tracking, which leaks. */
const MOTO_WRAPPER = fileURLToPath(new URL('./moto-server.py', import.meta.url));

/**
 * The Python that runs a moto_server console script: the interpreter its shebang names (pip
 * writes one), else python3 on PATH (e.g. behind a pyenv shim, a shell script).
 */
function pythonOf(motoServer: string): string | undefined {
  try {
    const first = readFileSync(motoServer, 'utf8').slice(0, 500).split('\n', 1)[0] ?? '';
    const named = /^#!\s*(\S*python[\d.]*)\s*$/.exec(first)?.[1];
    if (named !== undefined && existsSync(named)) return named;
  } catch {
    // not readable: try PATH
  }
  return findExecutable('python3');
}

async function startMotoAt(
  command: string,
  args: string[] = [],
): Promise<{ url: string; proc: ManagedProcess }> {
  const [port] = (await freePorts(1)) as [number];
  const proc = startProcess(
    'moto_server',
    command,
    [...args, '-H', HOST, '-p', String(port)],
    process.env,
    3_000,
  );
  const url = `http://${HOST}:${port}`;
  await waitUntilReady(proc, `${url}/moto-api/`);
  return { url, proc };
}

/**
 * Starts a moto_server through the wrapper (moto-server.py) when its Python can import moto,
 * else as it is. Without the wrapper the exactly-once suite's transactions grow the server by
 * gigabytes (FLOE_EO_FULL=1 reached 24 GB).
 */
async function startMotoServer(
  motoServer: string,
  log: (m: string) => void,
): Promise<{ url: string; proc: ManagedProcess }> {
  const python = pythonOf(motoServer);
  if (python !== undefined) {
    try {
      return await startMotoAt(python, [MOTO_WRAPPER]);
    } catch (err) {
      log(
        `[infra-tests] ${python} ${MOTO_WRAPPER} did not start (${(err as Error).message.split('\n', 1)[0]}); running ${motoServer} as it is`,
      );
    }
  }
  return startMotoAt(motoServer);
}

async function startMoto(
  repoRoot: string,
  log: (m: string) => void,
): Promise<{ url: string; proc: ManagedProcess }> {
  const venvMoto = path.join(repoRoot, '.venv', 'bin', 'moto_server');
  const candidates = [process.env.FLOE_MOTO_SERVER, findExecutable('moto_server'), venvMoto].filter(
    (c, i, all): c is string => c !== undefined && existsSync(c) && all.indexOf(c) === i,
  );
  const failures: string[] = [];
  for (const command of candidates) {
    try {
      return await startMotoServer(command, log);
    } catch (err) {
      failures.push(`${command}: ${(err as Error).message}`);
    }
  }
  try {
    return await startMotoServer(await installMotoIntoVenv(repoRoot, log), log);
  } catch (err) {
    failures.push(`.venv install: ${(err as Error).message}`);
  }
  throw new LocalEmulatorsUnavailable(
    [
      `moto_server (the DynamoDB and S3 emulator) is not on PATH and could not be installed into ${path.join(repoRoot, '.venv')}.`,
      `Install it with \`pip install '${MOTO_PIP_SPEC}'\` (or set FLOE_MOTO_SERVER=/path/to/moto_server). Attempts:`,
      ...failures.map((f) => `  - ${f.replaceAll('\n', '\n    ')}`),
    ].join('\n'),
  );
}

/**
 * A moto_server of a test's own, through `wrapper` (a Python script that patches moto, then runs
 * ./moto-server.py), on a free loopback port: for a test that changes the server's global
 * settings (e.g. IAM enforcement, `POST /moto-api/reset-auth`), which the shared server must not
 * see. The moto_server is found as for the shared one ($FLOE_MOTO_SERVER, PATH, `<repo>/.venv`),
 * without installing one; its Python must import moto. Stop it with `stop()`.
 */
export async function startOwnMotoServer(
  repoRoot: string,
  wrapper: string,
): Promise<{ url: string; stop(): Promise<void> }> {
  const venvMoto = path.join(repoRoot, '.venv', 'bin', 'moto_server');
  const candidates = [process.env.FLOE_MOTO_SERVER, findExecutable('moto_server'), venvMoto].filter(
    (c, i, all): c is string => c !== undefined && existsSync(c) && all.indexOf(c) === i,
  );
  const failures: string[] = [];
  for (const command of candidates) {
    const python = pythonOf(command);
    if (python === undefined) continue;
    try {
      const { url, proc } = await startMotoAt(python, [wrapper]);
      return { url, stop: () => proc.stop() };
    } catch (err) {
      failures.push(`${python} ${wrapper}: ${(err as Error).message}`);
    }
  }
  throw new LocalEmulatorsUnavailable(
    `no moto_server whose Python runs ${wrapper} (${MOTO_PIP_SPEC}); tried: ${failures.join('; ') || 'none found'}`,
  );
}

// ---------------------------------------------------------------------------------------------

/** Starts moto_server and kinesis-local in parallel; resolves when both answer. */
export async function startLocalEmulators(
  repoRoot: string,
  log: (m: string) => void = console.log,
): Promise<StartedLocalEmulators> {
  const t0 = performance.now();
  const [kinesis, moto] = await Promise.allSettled([startKinesisLocal(), startMoto(repoRoot, log)]);
  const started = [kinesis, moto].flatMap((r) => (r.status === 'fulfilled' ? [r.value.proc] : []));
  const stop = async () => {
    await Promise.all(started.map((p) => p.stop()));
  };
  if (kinesis.status === 'rejected' || moto.status === 'rejected') {
    await stop();
    const errors = [kinesis, moto].flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
    const unavailable = errors.find((e) => e instanceof LocalEmulatorsUnavailable);
    throw unavailable ?? errors[0];
  }
  const startupMs = Math.round(performance.now() - t0);
  return {
    env: {
      kind: 'local',
      description: `local: moto_server ${moto.value.url} (DynamoDB, S3), kinesis-local ${kinesis.value.url} (Kinesis)`,
      region: 'us-east-1',
      endpoints: { kinesis: kinesis.value.url, dynamodb: moto.value.url, s3: moto.value.url },
      engines: { kinesis: 'kinesis-mock', dynamodb: 'moto', s3: 'moto' },
      credentials: 'dummy',
      startupMs,
    },
    stop,
  };
}
