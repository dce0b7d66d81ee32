/** `floe savepoint create | list | inspect | delete`. */
import { resolve } from 'node:path';
import {
  compile,
  deserializeCheckpoint,
  operatorSchemas,
  pendingTimerCount,
  type SavepointManifest,
  type SavepointPipeline,
} from '../core/index.ts';
import {
  createSavepoint,
  deleteSavepoint,
  listSavepoints,
  readManifest,
  verifySavepoint,
} from '../runtime/savepoints.ts';
import {
  backendKind,
  checkGenerationFlag,
  formatCount,
  formatTime,
  jobIdFlag,
  MAX_LEASE_TTL,
  nonNegativeInt,
  oneOf,
  parseFlags,
  positiveInt,
  raisedGenerationWarning,
  savepointIdArg,
  streamFlag,
  UsageError,
} from './args.ts';
import { loadPipeline } from './load-pipeline.ts';
import {
  BACKEND_HELP,
  BACKEND_OPTIONS,
  describeManifest,
  faultHook,
  formatBytes,
  openSavepointBackend,
  progressPrinter,
} from './savepoint-backend.ts';

export const SAVEPOINT_HELP = `floe savepoint <create|list|inspect|delete> [options]

  floe savepoint create --job <id> [--stop] [--id <id>] [--pipeline <module.ts>]
      Takes a consistent savepoint of a running (or idle) job: every shard pauses at a commit
      boundary, the state and checkpoints are written as checksummed, compressed files, the
      manifest last; then the job resumes, or with --stop stays stopped ('floe run' refuses
      it; resume it with 'floe replay --from-savepoint <id>'). Prints the savepoint id on
      stdout. A crash is safe: rerun the same command to complete the savepoint.
        --stop              stop the job after the savepoint (stop-with-savepoint)
        --id <id>           savepoint id (default <job>-<UTC time>-<4 hex>)
        --stream <name>     the job's stream, if the job was never run by this floe (default: the job id)
        --pipeline <m.ts>   describe the state with this pipeline (default: what 'floe run' last ran)
        --timeout <s>       how long to wait for workers to pause (default 120)
        --lease-ttl <ms>    the savepoint's hold on the job; renewed at a third of it (default 30000, at most 2147483647)
        --chunk-entries <N> state entries per file (default 50000; at most 64 MiB of text each)
        --generation <N>    aws: the state generation of a job without a job record (default 0;
                            the StreamProcessor's generation prop)
  floe savepoint list [--job <id>] [--json]
  floe savepoint inspect <id> [--verify] [--json]
      --verify reads every file and checks its sha256, size and entry count.
  floe savepoint delete <id>
      Deletes a savepoint (complete or interrupted); refused while an unfinished replay still
      needs it (rerun that replay first).

${BACKEND_HELP}
  --progress <auto|none>       progress on stderr (default auto)`;

export async function runSavepoint(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'create':
      return create(rest);
    case 'list':
      return list(rest);
    case 'inspect':
      return inspect(rest);
    case 'delete':
      return remove(rest);
    case undefined:
      console.error(SAVEPOINT_HELP);
      return 2;
    case 'help':
    case '--help':
    case '-h':
      console.log(SAVEPOINT_HELP);
      return 0;
    default:
      throw new UsageError(`unknown savepoint command "${sub}"; use create, list, inspect or delete`);
  }
}

async function create(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('savepoint create', {
    args,
    allowPositionals: true,
    options: {
      ...BACKEND_OPTIONS,
      job: { type: 'string' },
      stop: { type: 'boolean', default: false },
      id: { type: 'string' },
      stream: { type: 'string' },
      pipeline: { type: 'string' },
      timeout: { type: 'string' },
      'lease-ttl': { type: 'string' },
      'chunk-entries': { type: 'string' },
      generation: { type: 'string' },
      progress: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SAVEPOINT_HELP);
    return 0;
  }
  if (positionals.length > 0)
    throw new UsageError(`savepoint create takes no positional arguments; received "${positionals[0]}"`);
  if (values.job === undefined) throw new UsageError('savepoint create needs --job <id>');
  const job = jobIdFlag('--job', values.job);
  const backend = backendKind(values);
  if (values.generation !== undefined && backend !== 'aws') {
    throw new UsageError(
      "--generation needs --backend aws: an embedded job's generation is in its job record ('floe replay' moves it)",
    );
  }
  const generation =
    values.generation === undefined ? undefined : nonNegativeInt('--generation', values.generation, 0);
  const id = values.id === undefined ? undefined : savepointIdArg('--id', values.id);
  const stream = streamFlag(values.stream);
  const progressMode = oneOf('--progress', values.progress, ['auto', 'none'], 'auto');
  let pipeline: SavepointPipeline | undefined;
  let operators: ReturnType<typeof operatorSchemas> | undefined;
  if (values.pipeline !== undefined) {
    const plan = compile(await loadPipeline(values.pipeline));
    pipeline = { name: plan.name, version: plan.version, module: resolve(values.pipeline) };
    operators = operatorSchemas(plan);
  }
  const opened = await openSavepointBackend(values, job);
  const progress = progressPrinter(progressMode === 'none');
  try {
    const onStep = faultHook('savepoint');
    const manifest = await createSavepoint(opened.backend, {
      job,
      stop: values.stop,
      ...(id === undefined ? {} : { id }),
      ...(stream === undefined ? {} : { stream }),
      ...(pipeline === undefined ? {} : { pipeline }),
      ...(operators === undefined ? {} : { operators }),
      // Checked on the record that the savepoint reads anyway (not read once more for it).
      ...(generation === undefined
        ? {}
        : { generation, checkRecord: (record) => checkGenerationFlag(job, generation, record) }),
      timeoutMs: positiveInt('--timeout', values.timeout, 120) * 1000,
      leaseTtlMs: positiveInt('--lease-ttl', values['lease-ttl'], 30_000, MAX_LEASE_TTL),
      chunkEntries: positiveInt('--chunk-entries', values['chunk-entries'], 50_000),
      commandArgs: opened.commandArgs,
      onProgress: progress.onProgress,
      ...(onStep === undefined ? {} : { onStep }),
    });
    progress.done();
    const raised = raisedGenerationWarning('savepoint', job, generation, manifest.generation);
    if (raised !== undefined) console.error(raised);
    console.error(`floe savepoint: ${describeManifest(manifest)}`);
    console.error(`  at ${opened.backend.snapshots.describe(manifest.id)}`);
    if (manifest.stopped) {
      const args =
        opened.kind === 'aws'
          ? ` ${(await import('./run-aws.ts')).awsCommandArgs(job, values)}`
          : opened.commandArgs === ''
            ? ''
            : ` ${opened.commandArgs}`;
      console.error(
        `  job ${job} is stopped; resume it with 'floe replay --from-savepoint ${manifest.id}${args}'`,
      );
    }
    console.log(manifest.id);
    return 0;
  } finally {
    progress.done();
    await opened.close();
  }
}

async function list(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('savepoint list', {
    args,
    allowPositionals: true,
    options: {
      ...BACKEND_OPTIONS,
      job: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SAVEPOINT_HELP);
    return 0;
  }
  if (positionals.length > 0)
    throw new UsageError(`savepoint list takes no positional arguments; received "${positionals[0]}"`);
  const job = jobIdFlag('--job', values.job);
  const opened = await openSavepointBackend(values, job, 'savepoints');
  try {
    const all = (await listSavepoints(opened.backend.snapshots)).filter(
      (s) =>
        job === undefined ||
        s.manifest?.job === job ||
        (s.manifest === undefined && s.id.startsWith(`${job}-`)),
    );
    if (values.json) {
      console.log(
        JSON.stringify(
          all.map((s) => ({
            id: s.id,
            status: s.status,
            ...(s.problem === undefined ? {} : { problem: s.problem }),
            ...(s.manifest === undefined ? {} : summary(s.manifest)),
          })),
          null,
          2,
        ),
      );
      return 0;
    }
    if (all.length === 0) {
      console.error(`no savepoints at ${opened.backend.snapshots.location}`);
      return 0;
    }
    const rows = all.map((s) => [
      s.id,
      s.manifest?.job ?? '',
      s.manifest === undefined ? '' : formatTime(s.manifest.createdAt),
      s.status + (s.manifest?.stopped ? ' (stop)' : ''),
      s.manifest === undefined ? '' : String(s.manifest.shards.length),
      s.manifest === undefined ? '' : formatCount(s.manifest.entries),
      s.manifest === undefined ? '' : formatBytes(s.manifest.bytes),
    ]);
    printTable(['ID', 'JOB', 'CREATED', 'STATUS', 'SHARDS', 'ENTRIES', 'SIZE'], rows);
    for (const s of all) if (s.problem !== undefined) console.error(`  ${s.id}: ${s.problem}`);
    return 0;
  } finally {
    await opened.close();
  }
}

async function inspect(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('savepoint inspect', {
    args,
    allowPositionals: true,
    options: {
      ...BACKEND_OPTIONS,
      job: { type: 'string' },
      verify: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SAVEPOINT_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('savepoint inspect takes one savepoint id');
  const id = savepointIdArg('savepoint inspect', positionals[0]!);
  const job = jobIdFlag('--job', values.job);
  const opened = await openSavepointBackend(values, job, 'savepoints');
  try {
    const manifest = await readManifest(opened.backend.snapshots, id);
    if (values.verify) await verifySavepoint(opened.backend.snapshots, manifest);
    if (values.json) {
      console.log(JSON.stringify(values.verify ? { ...manifest, verified: true } : manifest, null, 2));
      return 0;
    }
    const lines = [
      `savepoint ${manifest.id}`,
      `  location    ${opened.backend.snapshots.describe(manifest.id)}`,
      `  job         ${manifest.job} (generation ${manifest.generation})${manifest.stopped ? ', stopped with this savepoint' : ''}`,
      `  pipeline    ${manifest.pipeline.name} version ${manifest.pipeline.version}${manifest.pipeline.module ? ` (${manifest.pipeline.module})` : ''}`,
      `  created     ${formatTime(manifest.createdAt)} on the ${manifest.backend} backend`,
      `  stream      ${manifest.stream}`,
      `  state       ${formatCount(manifest.entries)} entries in ${manifest.files.length} file(s), ${formatBytes(manifest.bytes)} (state format ${manifest.stateFormat})`,
      '  operators',
      ...manifest.operators.map(
        (o) =>
          `    ${o.uid}  ${o.kind}${o.window ? ` (${o.window} windows)` : ''}  state: ${
            Object.entries(o.state)
              .map(([n, s]) => `${n}: ${s.kind}${s.ttl ? ' with TTL' : ''}`)
              .join(', ') || 'none declared'
          }`,
      ),
      '  shards',
      ...manifest.shards.map((s) => {
        const cp = deserializeCheckpoint(JSON.stringify(s.checkpoint));
        return `    ${cp.shardId}  position ${cp.position ?? '(start)'}${s.next ? `  next ${s.next}` : ''}  watermark ${formatTime(cp.watermark)}  commit ${cp.commitNumber}  timers ${pendingTimerCount(cp)}${cp.finished ? '  finished' : ''}`;
      }),
      '  files',
      ...manifest.files.map(
        (f) =>
          `    ${f.name}  ${formatCount(f.entries)} entries  ${formatBytes(f.bytes)}  sha256 ${f.sha256}`,
      ),
    ];
    if (values.verify) lines.push('  verified: every file matches its sha256, size and entry count');
    console.log(lines.join('\n'));
    return 0;
  } finally {
    await opened.close();
  }
}

async function remove(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('savepoint delete', {
    args,
    allowPositionals: true,
    options: { ...BACKEND_OPTIONS, job: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    console.log(SAVEPOINT_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('savepoint delete takes one savepoint id');
  const id = savepointIdArg('savepoint delete', positionals[0]!);
  const job = jobIdFlag('--job', values.job);
  const opened = await openSavepointBackend(values, job);
  try {
    await deleteSavepoint(opened.backend, id, {
      ...(job === undefined ? {} : { job }),
      // The replay and the abandon it suggests must reach the resources this delete reads.
      commandArgs: opened.commandArgs,
    });
    console.error(`floe savepoint: deleted ${id} from ${opened.backend.snapshots.location}`);
    return 0;
  } finally {
    await opened.close();
  }
}

function summary(m: SavepointManifest) {
  return {
    job: m.job,
    generation: m.generation,
    createdAt: new Date(m.createdAt).toISOString(),
    pipeline: m.pipeline,
    stopped: m.stopped,
    shards: m.shards.length,
    entries: m.entries,
    bytes: m.bytes,
  };
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  console.log([line(header), ...rows.map(line)].join('\n'));
}
