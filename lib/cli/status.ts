import { ConfigurationError } from '../core/index.ts';
import { DEFAULT_DATA_DIR, existingDatabase } from '../embedded/job.ts';
import { SqliteJobStore } from '../embedded/job-store.ts';
import { openSqlite } from '../embedded/sqlite.ts';
import { jobStatus, shardState, statusJson } from '../embedded/status.ts';
import { checkStatusStream, generationOf } from '../runtime/job-control.ts';
import {
  backendKind,
  formatCount,
  formatTime,
  jobIdFlag,
  nonNegativeInt,
  parseFlags,
  streamFlag,
  UsageError,
} from './args.ts';

export const STATUS_HELP = `floe status --job <id> [--backend embedded|aws] [--stream <name>] [options] [--json]

Shows, per shard of the job's stream: position, lag, watermark and last commit. Embedded: also
the job's published outputs per sink, including dead letters. AWS: also the pending timers, the
outputs committed but not yet published, and the shard's lease.

Options:
  --job <id>                the job (required)
  --backend <embedded|aws>  embedded: SQLite + local log in --data-dir (default);
                            aws: the endpoints the AWS SDK is configured for
  --stream, -s <name>       its input stream (default: the job's, else the job id)
  --data-dir <dir>          embedded data directory (default .floe)
  --json                    print JSON (its fields: docs/cli.md)
AWS backend (endpoints from AWS_ENDPOINT_URL[_SERVICE], region and credentials as the SDK finds them):
  --state-table, --control-table <name>  DynamoDB tables (default floe-<job>-state / -control)
  --bucket <name>           S3 bucket of deltas and large checkpoints (default floe-<job>)
  --generation <N>          state generation of a job without a job record (default 0; the
                            StreamProcessor's generation prop); refused when the record names another`;

export async function runStatus(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('status', {
    args,
    allowPositionals: true,
    options: {
      job: { type: 'string' },
      backend: { type: 'string' },
      stream: { type: 'string', short: 's' },
      'data-dir': { type: 'string' },
      'state-table': { type: 'string' },
      'control-table': { type: 'string' },
      bucket: { type: 'string' },
      generation: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(STATUS_HELP);
    return 0;
  }
  if (positionals.length > 0)
    throw new UsageError(`status takes no positional arguments; received "${positionals[0]}"`);
  if (values.job === undefined) throw new UsageError('status needs --job <id>');
  const job = jobIdFlag('--job', values.job);
  const streamName = streamFlag(values.stream);
  const backend = backendKind(values);
  if (backend === 'aws') {
    if (values['data-dir'] !== undefined)
      throw new UsageError('--data-dir is for the embedded backend; on --backend aws name the resources');
    const { runStatusAws } = await import('./status-aws.ts');
    return runStatusAws({
      job,
      stream: streamName,
      stateTable: values['state-table'],
      controlTable: values['control-table'],
      bucket: values.bucket,
      generation:
        values.generation === undefined ? undefined : nonNegativeInt('--generation', values.generation, 0),
      json: values.json,
    });
  }
  for (const flag of ['state-table', 'control-table', 'bucket', 'generation'] as const) {
    if (values[flag] !== undefined) throw new UsageError(`--${flag} needs --backend aws`);
  }
  const path = existingDatabase(
    values['data-dir'] ?? DEFAULT_DATA_DIR,
    "run 'floe produce' and 'floe run' first, or check --data-dir",
  );
  const db = openSqlite(path);
  try {
    // The job record (written by floe run, savepoints and replays) names the stream and generation.
    const jobs = new SqliteJobStore(db);
    const found = await jobs.lookup(job);
    const record = found.record;
    checkStatusStream(record, streamName);
    const stream = streamName ?? record?.stream ?? job;
    const known =
      db.prepare('SELECT 1 FROM sqlite_master WHERE name = ?').get('floe_log_stream') !== undefined;
    if (!known || db.prepare('SELECT 1 FROM floe_log_stream WHERE name = ?').get(stream) === undefined) {
      // Without a job record the stream was guessed from the job id: a misspelt job id lands
      // here, so say that no such job has run, and which ones have.
      if (record === undefined && streamName === undefined) {
        const names = (await jobs.list()).map((r) => r.job);
        const streams = known
          ? db
              .prepare<[], { name: string }>('SELECT name FROM floe_log_stream ORDER BY name')
              .all()
              .map((r) => r.name)
          : [];
        throw new ConfigurationError(
          `no job "${job}" has run in ${path} (jobs: ${names.join(', ') || 'none'}), and without a job record its stream is taken to be "${stream}": unknown stream "${stream}" (streams: ${streams.join(', ') || 'none'}). Check --job, or pass --stream <name> for a job that has not run yet`,
        );
      }
      throw new ConfigurationError(`unknown stream "${stream}" in ${path}; pass --stream <name>`);
    }
    const generation = generationOf(found);
    const status = jobStatus(db, job, stream, generation, record?.startPosition);
    if (values.json) {
      console.log(
        JSON.stringify(
          statusJson(status, generation, record, Date.now()),
          (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v),
          2,
        ),
      );
      return 0;
    }
    console.log(
      `job ${job} on stream ${stream}${record === undefined ? '' : ` (generation ${record.generation}, ${record.state}${record.restoredFrom ? `, restored from savepoint ${record.restoredFrom.savepointId}` : ''}${record.stoppedBy ? `, stopped with savepoint ${record.stoppedBy.savepointId}` : ''})`}`,
    );
    console.log(
      'shard                 state   position              lag        watermark             commits',
    );
    for (const s of status.shards) {
      const cp = s.checkpoint;
      const state = shardState(s);
      console.log(
        `${s.shardId}  ${state.padEnd(6)}  ${(cp?.position ?? '-').padEnd(20)}  ${formatCount(s.lag).padStart(9)}  ${formatTime(cp?.watermark ?? Number.NEGATIVE_INFINITY).padEnd(20)}  ${cp?.commitNumber ?? 0}`,
      );
    }
    console.log('outputs:');
    for (const [sink, n] of Object.entries(status.outputs))
      console.log(`  ${sink.padEnd(24)} ${formatCount(n)}`);
    console.log(`dead letters: ${formatCount(status.deadLetters)}`);
    return 0;
  } finally {
    db.close();
  }
}
