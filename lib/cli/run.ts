/** `floe run`: runs a pipeline with the local runner (embedded backend by default). */

import { resolve } from 'node:path';
import { compile, type PipelinePlan } from '../core/index.ts';
import { DEFAULT_DATA_DIR, existingDatabase } from '../embedded/job.ts';
import { openEmbeddedJobForRun } from '../embedded/run-job.ts';
import { jobStatus } from '../embedded/status.ts';
import { runJob } from '../runtime/local-runner.ts';
import { DEFAULT_MAX_CACHED_KEYS } from '../runtime/worker.ts';
import {
  type BackendOnlyFlags,
  backendKind,
  bar,
  checkBackendFlagsOf,
  checkedRetryLine,
  formatCount,
  formatTime,
  jobIdFlag,
  MAX_BATCH_SIZE,
  MAX_LEASE_TTL,
  nonNegativeInt,
  oneOf,
  parseFlags,
  positiveInt,
  retryNotice,
  streamFlag,
  throttled,
  UsageError,
} from './args.ts';
import { loadPipeline } from './load-pipeline.ts';

export const RUN_HELP = `floe run <pipeline.ts> [options]

Runs the pipeline (the module's default export) with the local runner: the coordinator and one
worker per shard in this process, committing state, outputs and checkpoints exactly once.

Options:
  --backend <embedded|aws>  embedded: SQLite + local log in --data-dir (default);
                            aws: the endpoints the AWS SDK is configured for
  --stream, -s <name>       input stream (default: the job's stream, else the pipeline name)
  --job <id>                job id: scopes state, checkpoints and outputs (default: the pipeline name)
  --until-idle              stop once every shard is caught up (default: run until Ctrl-C)
  --batch-size <N>          records per read, 1 to 10000 (default 1000)
  --commit-interval <ms>    reads of this long share one commit: fewer state writes, outputs
                            published up to this much later (default 0: commit every read)
  --lease-ttl <ms>          shard lease time to live; a crashed worker's shards are taken over
                            after it (default 10000, at most 2147483647)
  --max-cached-keys <N>     keys whose state a worker keeps in memory per keyed operator; the
                            least recently used beyond it are read again (default 100000)
  --progress <auto|lines|none>  live progress on a terminal, periodic lines otherwise (default auto)
  --data-dir <dir>          embedded data directory (default .floe); it must exist: 'floe produce'
                            creates it
AWS backend (endpoints from AWS_ENDPOINT_URL[_SERVICE], region and credentials as the SDK finds them):
  --stream <name>           Kinesis stream (default: the job's, else the pipeline name)
  --state-table, --control-table <name>  DynamoDB tables (default floe-<job>-state / -control)
  --bucket <name>           S3 bucket for deltas, large checkpoints and default outputs (default floe-<job>)
  --sink <name=destination> bind a sink, repeatable: name=dynamodb:Table?key=a,b | kinesis:Stream |
                            s3:bucket/prefix/ (unbound sinks go to s3://<bucket>/outputs/<job>/)
  --create-resources        create the stream, tables and bucket if missing (for emulators)
  --shards <N>              shards of a stream --create-resources creates (default 4)
  --generation <N>          state generation of a job without a job record (default 0; the
                            StreamProcessor's generation prop); a job with one runs its generation
The AWS options are refused on the embedded backend, and --data-dir on the AWS backend.`;

/** The flags of `floe run` (and `floe replay`) that only one backend takes. */
const RUN_BACKEND_FLAGS: BackendOnlyFlags = {
  awsOnly: {
    sink: 'the embedded backend writes every sink to the table floe_out_<job> of <data-dir>/floe.db',
    'create-resources': "on the embedded backend 'floe produce' creates the stream",
    shards: "on the embedded backend 'floe produce --shards N' sets the shards when it creates the stream",
    'state-table': 'the embedded backend keeps state in <data-dir>/floe.db',
    'control-table': 'the embedded backend keeps checkpoints in <data-dir>/floe.db',
    bucket: 'the embedded backend keeps everything in <data-dir>',
    generation: "the embedded backend runs the generation its job record names ('floe replay' moves it)",
  },
  embeddedOnly: {
    'data-dir':
      '--data-dir is for the embedded backend; on --backend aws name the resources with --stream, --state-table, --control-table and --bucket',
  },
};

/**
 * Refuses flags the chosen backend would ignore. Shared with `floe replay`, which checks them
 * before it restores anything.
 */
export function checkBackendFlags(
  backend: 'embedded' | 'aws',
  values: { readonly [flag: string]: unknown },
): void {
  checkBackendFlagsOf(backend, values, RUN_BACKEND_FLAGS);
}

/**
 * Refuses `--sink` bindings that do not parse, or that name a sink the pipeline does not have
 * (a misspelt name would otherwise send that sink's outputs to the default destination).
 */
export async function checkSinkBindings(specs: readonly string[], plan: PipelinePlan): Promise<void> {
  if (specs.length === 0) return;
  const { parseSinkBindings } = await import('../aws/sinks-config.ts');
  let bindings: Array<{ readonly sink: string; readonly spec: string }>;
  try {
    bindings = parseSinkBindings(specs);
  } catch (error) {
    throw new UsageError(`--sink: ${(error as Error).message}`);
  }
  for (const binding of bindings) {
    if (binding.sink === '*' || plan.sinks.includes(binding.sink)) continue;
    throw new UsageError(
      `--sink ${JSON.stringify(binding.spec)} binds "${binding.sink}", which pipeline ${plan.name} has no sink for; its sinks are ${plan.sinks.join(', ')} ("*" binds every unbound one)`,
    );
  }
}

/** Refuses a data directory without a database: only `floe produce` creates one. */
export function checkEmbeddedData(dataDir: string): void {
  existingDatabase(
    dataDir,
    `check --data-dir, or create a stream there first with 'floe produce --stream <name> --data-dir ${dataDir}'`,
  );
}

export async function runRun(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('run', {
    args,
    allowPositionals: true,
    options: {
      backend: { type: 'string' },
      stream: { type: 'string', short: 's' },
      job: { type: 'string' },
      'until-idle': { type: 'boolean', default: false },
      'batch-size': { type: 'string' },
      'commit-interval': { type: 'string' },
      'lease-ttl': { type: 'string' },
      'max-cached-keys': { type: 'string' },
      'state-table': { type: 'string' },
      'control-table': { type: 'string' },
      bucket: { type: 'string' },
      sink: { type: 'string', multiple: true },
      'create-resources': { type: 'boolean' },
      shards: { type: 'string' },
      generation: { type: 'string' },
      'data-dir': { type: 'string' },
      progress: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(RUN_HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UsageError(
      `run takes exactly one pipeline module; received ${positionals.length}. See 'floe run --help'.`,
    );
  }
  const backend = backendKind(values);
  checkBackendFlags(backend, values);
  const jobFlag = jobIdFlag('--job', values.job);
  const streamName = streamFlag(values.stream);
  const batchSize = positiveInt('--batch-size', values['batch-size'], 1000, MAX_BATCH_SIZE);
  const commitIntervalMs = nonNegativeInt('--commit-interval', values['commit-interval'], 0);
  const progressMode = oneOf('--progress', values.progress, ['auto', 'lines', 'none'], 'auto');
  const pipeline = await loadPipeline(positionals[0]);
  const plan = compile(pipeline);
  const jobId = jobFlag ?? pipeline.name;
  const leaseTtlMs = positiveInt('--lease-ttl', values['lease-ttl'], 10_000, MAX_LEASE_TTL);
  const maxCachedKeys = positiveInt('--max-cached-keys', values['max-cached-keys'], DEFAULT_MAX_CACHED_KEYS);
  if (backend === 'aws') {
    await checkSinkBindings(values.sink ?? [], plan);
    const { runAws } = await import('./run-aws.ts');
    return runAws({
      plan,
      job: jobId,
      stream: streamName,
      stateTable: values['state-table'],
      controlTable: values['control-table'],
      bucket: values.bucket,
      sinks: values.sink ?? [],
      createResources: values['create-resources'] === true,
      shards: positiveInt('--shards', values.shards, 4),
      ...(values.generation === undefined
        ? {}
        : { generation: nonNegativeInt('--generation', values.generation, 0) }),
      untilIdle: values['until-idle'],
      batchSize,
      commitIntervalMs,
      maxCachedKeys,
      leaseTtlMs,
      quiet: progressMode === 'none',
      pipelineModule: resolve(positionals[0]!),
    });
  }
  const dataDir = values['data-dir'] ?? DEFAULT_DATA_DIR;
  checkEmbeddedData(dataDir);
  const job = await openEmbeddedJobForRun({
    dataDir,
    stream: streamName,
    job: jobId,
    plan,
    pipeline: { name: plan.name, version: plan.version, module: resolve(positionals[0]!) },
  });
  const { generation, stream: jobStream } = job;
  let pausedFor = '';
  const controller = new AbortController();
  const stop = (): void => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const started = Date.now();
  let records = 0;
  const live = progressMode === 'auto' ? Boolean(process.stderr.isTTY) : false;
  let lastLines = 0;
  const render = (final = false): void => {
    if (progressMode === 'none') return;
    const status = jobStatus(job.db, jobId, jobStream, generation, job.runtime.startPosition);
    const total = status.shards.reduce((n, s) => n + s.records, 0);
    const lag = status.shards.reduce((n, s) => n + s.lag, 0);
    const seconds = (Date.now() - started) / 1000;
    const lines = [
      `${bar(total === 0 ? 1 : (total - lag) / total)} ${formatCount(total - lag)}/${formatCount(total)} records, ${formatCount(Math.round(records / Math.max(seconds, 0.001)))} records/s`,
      ...status.shards.map(
        (s) =>
          `  ${s.shardId}${s.closed ? ' (closed)' : ''}  lag ${formatCount(s.lag).padStart(8)}  watermark ${formatTime(s.checkpoint?.watermark ?? Number.NEGATIVE_INFINITY)}  commits ${s.checkpoint?.commitNumber ?? 0}`,
      ),
    ];
    if (live && !final) {
      if (lastLines > 0) process.stderr.write(`\x1b[${lastLines}A`);
      process.stderr.write(lines.map((l) => `\x1b[2K${l}\n`).join(''));
      lastLines = lines.length;
    } else {
      if (live && lastLines > 0) process.stderr.write(`\x1b[${lastLines}A\x1b[J`);
      process.stderr.write(`${lines.join('\n')}\n`);
      lastLines = 0;
    }
  };
  const timer = setInterval(
    throttled(() => render()),
    live ? 250 : 5000,
  );
  try {
    const summary = await runJob(job.runtime, {
      untilIdle: values['until-idle'],
      batchSize,
      commitIntervalMs,
      maxCachedKeys,
      signal: controller.signal,
      // The local log has no read quota: poll it often. Kinesis: the worker's default (1 s).
      ...(backend === 'embedded' ? { idlePollMs: 200 } : {}),
      leaseTtlMs,
      onPaused: (reason) => {
        if (progressMode !== 'none' && !live && reason !== pausedFor) console.error(`  paused: ${reason}`);
        pausedFor = reason;
      },
      // Not only a lease another worker holds: any retryable failure of a shard (see retryNotice).
      onLeaseBusy: retryNotice((line) => {
        // A warning, not progress (also with --progress none); not into the live view's lines.
        if (!live) console.error(line);
      }),
      onCheckedRetry: (error) => {
        // A warning too: records are about to be dead-lettered.
        if (!live) console.error(checkedRetryLine(error));
      },
      onCommit: (p) => {
        records += p.records;
      },
    });
    clearInterval(timer);
    render(true);
    const status = jobStatus(job.db, jobId, jobStream, generation, job.runtime.startPosition);
    const seconds = (Date.now() - started) / 1000;
    console.error(
      `floe run: job "${jobId}" processed ${formatCount(summary.records)} records in ${seconds.toFixed(1)} s (${formatCount(Math.round(summary.records / Math.max(seconds, 0.001)))} records/s), ${summary.commits} commits`,
    );
    if (summary.stopped !== undefined) console.error(`  stopped: ${summary.stopped}`);
    for (const [sink, n] of Object.entries(status.outputs))
      console.error(`  ${sink}: ${formatCount(n)} outputs`);
    console.error(`  results: table ${job.sink.table} in ${dataDir}/floe.db`);
    return 0;
  } finally {
    clearInterval(timer);
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await job.close();
  }
}
