/** `floe produce`: append events to a stream of the embedded local log, or of Kinesis (produce-aws.ts). */

import { existsSync } from 'node:fs';
import { ConfigurationError, describeValue, isEventTime, MAX_EVENT_TIME } from '../core/index.ts';
import { checkDataDirNotFile, DEFAULT_DATA_DIR, databasePath } from '../embedded/job.ts';
import {
  type AppendRecord,
  DEFAULT_RETENTION_MS,
  LocalLog,
  MAX_PARTITION_KEY_LENGTH,
  MAX_RECORD_BYTES,
} from '../embedded/local-log.ts';
import { openSqlite } from '../embedded/sqlite.ts';
import { clickstream } from '../runtime/clickstream.ts';
import {
  type BackendOnlyFlags,
  backendKind,
  bar,
  checkBackendFlagsOf,
  formatCount,
  fraction,
  MAX_SHARDS,
  nonNegativeInt,
  oneOf,
  parseFlags,
  positiveInt,
  streamFlag,
  UsageError,
} from './args.ts';
import { checkInputPath, inputLines } from './files.ts';

export const PRODUCE_HELP = `floe produce --stream <name> (--file <events.ndjson|-> | --generate clickstream) [options]

Appends events to a stream of the embedded local log (created if missing), or with --backend aws
puts them into a Kinesis stream. --file checks every line first: a bad line creates and appends
nothing.

Input:
  --file, -f <file|->     NDJSON: {"partitionKey": "...", "data": <JSON>, "arrival"?: <epoch ms>} lines (no other
                          field), or plain JSON events with --partition-key naming the field to partition by
  --generate clickstream  synthetic clicks {user, page, ts}: sessions, Zipf-popular pages,
                          out-of-order and late events; arrival times follow event time and
                          end about now, so windows closed only by idleness (e.g. the last
                          minute) fire once the job has been idle for its idle timeout
Options:
  --stream, -s <name>     stream name (required)
  --shards <N>            shards when the stream is created, 1 to 1024 (default 4)
  --retention-hours <N|infinite>  retention when the stream is created (default 24, as Kinesis);
                          records whose arrival time is older are trimmed
  --partition-key <field> field of each event used as partition key (clickstream: user)
  --events <N>            generated events (default 200000)
  --rate <N>              generated events per second of event time (default 200)
  --users <N>, --pages <N>  generated key counts (default 2000 users, 50 pages)
  --out-of-order <f>      fraction of events out of order (default 0.05)
  --late <f>              fraction of events behind the watermark (default 0.005)
  --poison <N>            add N records that are not valid JSON (default 0)
  --seed <N>              generator seed (default 42)
  --backend <embedded|aws>  embedded: the local log in --data-dir (default); aws: Kinesis
  --data-dir <dir>        embedded data directory (default .floe)

AWS backend (endpoints from AWS_ENDPOINT_URL[_SERVICE], region and credentials as the SDK finds them):
  --create-resources      create the stream with --shards shards if missing (for emulators)
Records go in PutRecords requests of up to 500 records / 5 MiB, one request at a time, failed
records resent with backoff before the next request. Kinesis stamps arrival times itself: a
file's "arrival" is refused, the generator's are not sent. --retention-hours and --data-dir are
refused, and --shards without --create-resources.`;

export interface ProduceOptions {
  readonly dataDir: string;
  readonly stream: string;
  readonly shards: number;
  readonly retentionMs?: number;
  readonly onProgress?: (written: number, total: number | undefined) => void;
}

/** Appends records in chunks; returns the number written. */
export async function produceRecords(
  options: ProduceOptions,
  records: AsyncIterable<AppendRecord> | Iterable<AppendRecord>,
  total?: number,
): Promise<number> {
  const log = LocalLog.open(databasePath(options.dataDir));
  try {
    await log.ensureStream(options.stream, {
      shards: options.shards,
      ...(options.retentionMs === undefined ? {} : { retentionMs: options.retentionMs }),
    });
    let chunk: AppendRecord[] = [];
    let written = 0;
    for await (const record of records) {
      chunk.push(record);
      if (chunk.length >= 5000) {
        await log.append(options.stream, chunk);
        written += chunk.length;
        chunk = [];
        options.onProgress?.(written, total);
      }
    }
    if (chunk.length > 0) await log.append(options.stream, chunk);
    written += chunk.length;
    options.onProgress?.(written, total);
    return written;
  } finally {
    await log.close();
  }
}

/** The arrival times of the records to append: the first one's, and the newest. */
interface Arrivals {
  readonly first: number;
  readonly newest: number;
}

/** The retention and latest arrival of a stream that already exists, without creating anything. */
function existingStream(
  options: ProduceOptions,
): { retentionMs: number | null; lastArrival: number } | undefined {
  const path = databasePath(options.dataDir);
  if (!existsSync(path)) return undefined;
  const db = openSqlite(path);
  try {
    if (db.prepare('SELECT 1 FROM sqlite_master WHERE name = ?').get('floe_log_stream') === undefined) return;
    const row = db
      .prepare<[string], { retention_ms: number | null; last_arrival: number }>(
        'SELECT retention_ms, last_arrival FROM floe_log_stream WHERE name = ?',
      )
      .get(options.stream);
    return row === undefined ? undefined : { retentionMs: row.retention_ms, lastArrival: row.last_arrival };
  } finally {
    db.close();
  }
}

/**
 * Refuses records that would be past the stream's retention as they are appended: the log trims
 * them at once, so they would be reported as appended and yet be gone before any job reads them.
 * Arrivals never decrease within a stream, so the first record's is the oldest.
 */
function checkWithinRetention(options: ProduceOptions, arrivals: Arrivals, now = Date.now()): void {
  const stream = existingStream(options);
  const retentionMs =
    stream === undefined
      ? options.retentionMs === Number.POSITIVE_INFINITY
        ? null
        : (options.retentionMs ?? DEFAULT_RETENTION_MS)
      : stream.retentionMs;
  if (retentionMs === null) return;
  const lastArrival = stream?.lastArrival ?? Number.NEGATIVE_INFINITY;
  const oldest = Math.max(arrivals.first, lastArrival);
  const newest = Math.max(arrivals.newest, lastArrival, now);
  if (oldest >= newest - retentionMs) return;
  const hours = (ms: number): string => `${(ms / 3_600_000).toFixed(1)} h`;
  const remedy =
    stream === undefined
      ? `pass --retention-hours ${Math.ceil((newest - oldest) / 3_600_000) + 1} or infinite (it applies when the stream is created)`
      : `produce into a new stream with --retention-hours ${Math.ceil((newest - oldest) / 3_600_000) + 1} or infinite`;
  throw new ConfigurationError(
    `the records' arrival times span ${hours(newest - oldest)} up to ${new Date(newest).toISOString()}, beyond the ${hours(retentionMs)} retention of stream "${options.stream}": the oldest would be trimmed as soon as they are appended; ${remedy}`,
  );
}

/** Generated clicks as log records; arrival follows event time (a replay of recent history). */
export function* clickRecords(options: {
  events: number;
  rate: number;
  users: number;
  pages: number;
  outOfOrder: number;
  late: number;
  seed: number;
  partitionKey: 'user' | 'page';
  poison: number;
  start: number;
}): Generator<AppendRecord> {
  let arrival = options.start;
  let n = 0;
  let poisoned = 0;
  for (const click of clickstream(options)) {
    arrival = Math.max(arrival, click.ts);
    n++;
    yield { partitionKey: click[options.partitionKey], data: JSON.stringify(click), arrivalTime: arrival };
    // Exactly `poison` invalid records, spread evenly: after the n-th click, as many as bring the
    // count to floor(n * poison / events) (several after each click when poison > events).
    for (const due = Math.floor((n * options.poison) / options.events); poisoned < due; poisoned++) {
      yield {
        partitionKey: click[options.partitionKey],
        data: `{"user": "${click.user}", "ts": oops}`,
        arrivalTime: arrival,
      };
    }
  }
}

const RECORD_FIELDS = ['partitionKey', 'data', 'arrival'];

/**
 * Refuses what a record line would otherwise lose without a word: an arrival time that is not
 * epoch milliseconds (an ISO string would be replaced by the time of the append) and a field
 * the record does not have (a misspelt "arrival", or a simulate line's "shard").
 */
function checkRecordLine(obj: Record<string, unknown>, line: number): void {
  const unknown = Object.keys(obj).filter((field) => !RECORD_FIELDS.includes(field));
  if (unknown.length > 0) {
    throw new ConfigurationError(
      `line ${line}: unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((f) => `"${f}"`).join(', ')} (misspelt?); a record has only "partitionKey", "data" and "arrival", or pass --partition-key <field> for plain events`,
    );
  }
  // Whole milliseconds within a Date's range, as Kinesis arrival timestamps are (and so they can
  // be printed); the log would store 1.5 rounded, without a word.
  if (obj.arrival !== undefined && !(isEventTime(obj.arrival) && Number.isInteger(obj.arrival))) {
    throw new ConfigurationError(
      `line ${line}: "arrival" must be whole epoch milliseconds within ±${MAX_EVENT_TIME} (a Date's range); received ${describeValue(obj.arrival)}`,
    );
  }
}

const utf8 = new TextEncoder();

/**
 * Checks a line's record against the log's limits (Kinesis'), which the append would otherwise
 * enforce only once earlier chunks of the file were appended, naming a record of the chunk
 * instead of the line.
 */
function withinLimits(record: AppendRecord, line: number, kinesis: boolean): AppendRecord {
  const key = record.partitionKey;
  if (key.length === 0 || key.length > MAX_PARTITION_KEY_LENGTH) {
    throw new ConfigurationError(
      `line ${line}: the partition key must be 1 to ${MAX_PARTITION_KEY_LENGTH} characters; received ${key.length === 0 ? 'an empty one' : `${key.length} characters (${describeValue(key)})`}`,
    );
  }
  const bytes =
    (typeof record.data === 'string' ? utf8.encode(record.data).byteLength : record.data.byteLength) +
    // Kinesis counts the partition key too; the local log, the data only.
    (kinesis ? utf8.encode(key).byteLength : 0);
  if (bytes > MAX_RECORD_BYTES) {
    throw new ConfigurationError(
      `line ${line}: the record's data${kinesis ? ' and partition key' : ''} is ${bytes} bytes; a record holds at most ${MAX_RECORD_BYTES} (1 MiB)`,
    );
  }
  return record;
}

/**
 * Records of an NDJSON file's lines (see PRODUCE_HELP); a bad line is an error naming it.
 * `kinesis`: for --backend aws, which cannot set an arrival time.
 */
async function* fileRecords(
  lines: AsyncIterable<string>,
  partitionField: string | undefined,
  kinesis: boolean,
): AsyncIterable<AppendRecord> {
  let line = 0;
  for await (const text of lines) {
    line++;
    if (text.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new ConfigurationError(`line ${line}: not valid JSON: ${text.slice(0, 80)}`);
    }
    const obj = value as Record<string, unknown>;
    if (partitionField === undefined) {
      if (typeof obj?.partitionKey !== 'string' || !('data' in obj)) {
        throw new ConfigurationError(
          `line ${line}: expected {"partitionKey": "...", "data": ...}, or pass --partition-key <field> for plain events; received ${text.slice(0, 80)}`,
        );
      }
      checkRecordLine(obj, line);
      if (kinesis && obj.arrival !== undefined) {
        throw new ConfigurationError(
          `line ${line}: "arrival" cannot be set on Kinesis, which stamps each record's arrival time itself; remove the field (e.g. jq -c 'del(.arrival)'), or produce to the embedded backend`,
        );
      }
      yield withinLimits(
        {
          partitionKey: obj.partitionKey,
          data: JSON.stringify(obj.data),
          ...(obj.arrival === undefined ? {} : { arrivalTime: obj.arrival as number }),
        },
        line,
        kinesis,
      );
    } else {
      const key = obj?.[partitionField];
      if (typeof key !== 'string' && typeof key !== 'number') {
        throw new ConfigurationError(
          `line ${line}: field "${partitionField}" must be a string or number to partition by; received ${describeValue(key)}`,
        );
      }
      yield withinLimits({ partitionKey: String(key), data: text }, line, kinesis);
    }
  }
}

export async function runProduce(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('produce', {
    args,
    allowPositionals: true,
    options: {
      stream: { type: 'string', short: 's' },
      shards: { type: 'string' },
      'retention-hours': { type: 'string' },
      file: { type: 'string', short: 'f' },
      generate: { type: 'string' },
      'partition-key': { type: 'string' },
      events: { type: 'string' },
      rate: { type: 'string' },
      users: { type: 'string' },
      pages: { type: 'string' },
      'out-of-order': { type: 'string' },
      late: { type: 'string' },
      poison: { type: 'string' },
      seed: { type: 'string' },
      'data-dir': { type: 'string' },
      backend: { type: 'string' },
      'create-resources': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(PRODUCE_HELP);
    return 0;
  }
  if (positionals.length > 0)
    throw new UsageError(`produce takes no positional arguments; received "${positionals[0]}"`);
  if (values.stream === undefined) throw new UsageError('produce needs --stream <name>');
  // Before anything is read or created: a bad name would otherwise leave an empty data directory.
  streamFlag(values.stream);
  if ((values.file === undefined) === (values.generate === undefined)) {
    throw new UsageError('produce needs exactly one of --file <events.ndjson|-> or --generate clickstream');
  }
  const backend = backendKind(values);
  checkBackendFlagsOf(backend, values, PRODUCE_BACKEND_FLAGS);
  if (values.file !== undefined) checkInputPath(values.file, '--file');
  if (backend === 'embedded') checkDataDirNotFile(values['data-dir'] ?? DEFAULT_DATA_DIR);
  const options: ProduceOptions = {
    dataDir: values['data-dir'] ?? DEFAULT_DATA_DIR,
    stream: values.stream,
    shards: positiveInt('--shards', values.shards, 4, MAX_SHARDS),
    ...(values['retention-hours'] === undefined
      ? {}
      : {
          retentionMs:
            values['retention-hours'] === 'infinite'
              ? Number.POSITIVE_INFINITY
              : positiveInt('--retention-hours', values['retention-hours'], 24) * 3_600_000,
        }),
    onProgress: (written, total) => {
      if (!process.stderr.isTTY) return;
      process.stderr.write(
        `\r${total === undefined ? '' : `${bar(written / total)} `}${formatCount(written)} records`,
      );
    },
  };
  const aws = backend === 'aws' ? await import('./produce-aws.ts') : undefined;
  let summary: import('./produce-aws.ts').ProduceAwsSummary | undefined;
  const write = async (
    records: AsyncIterable<AppendRecord> | Iterable<AppendRecord>,
    total?: number,
  ): Promise<number> => {
    if (aws === undefined) return produceRecords(options, records, total);
    summary = await aws.produceToKinesis(
      {
        stream: options.stream,
        createResources: values['create-resources'] === true,
        shards: options.shards,
        ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
      },
      records,
      total,
    );
    return summary.records;
  };
  // Kinesis stamps its own arrival times (now): nothing it is sent is past its retention.
  const checkRetention = (arrivals: Arrivals, now: number): void => {
    if (aws === undefined) checkWithinRetention(options, arrivals, now);
  };
  let written: number;
  if (values.generate !== undefined) {
    oneOf('--generate', values.generate, ['clickstream'], 'clickstream');
    const events = positiveInt('--events', values.events, 200_000);
    const rate = positiveInt('--rate', values.rate, 200);
    // The generated history ends about now.
    // One clock reading, so the span checked is exactly events / rate (a second reading could add a
    // millisecond and round the suggested retention up by an hour).
    const now = Date.now();
    const start = now - Math.ceil((events / rate) * 1000);
    checkRetention({ first: start, newest: now }, now);
    written = await write(
      clickRecords({
        events,
        rate,
        users: positiveInt('--users', values.users, 2_000),
        pages: positiveInt('--pages', values.pages, 50),
        outOfOrder: fraction('--out-of-order', values['out-of-order'], 0.05),
        late: fraction('--late', values.late, 0.005),
        seed: positiveInt('--seed', values.seed, 42),
        partitionKey: oneOf('--partition-key', values['partition-key'], ['user', 'page'], 'user'),
        poison: nonNegativeInt('--poison', values.poison, 0),
        start,
      }),
      events,
    );
  } else {
    // Every line is checked before anything is written: a bad line leaves no stream created
    // and no records appended. A file is read twice; stdin is held in memory.
    const path = values.file!;
    const records = async (): Promise<AsyncIterable<AppendRecord>> =>
      fileRecords(await inputLines(path, '--file'), values['partition-key'], aws !== undefined);
    const now = Date.now();
    let arrivals: { first: number; newest: number } | undefined;
    const note = (record: AppendRecord): void => {
      const arrival = record.arrivalTime ?? now;
      arrivals ??= { first: arrival, newest: arrival };
      arrivals.newest = Math.max(arrivals.newest, arrival);
    };
    if (path === '-') {
      const all: AppendRecord[] = [];
      for await (const record of await records()) {
        note(record);
        all.push(record);
      }
      if (arrivals !== undefined) checkRetention(arrivals, now);
      written = await write(all);
    } else {
      for await (const record of await records()) note(record);
      if (arrivals !== undefined) checkRetention(arrivals, now);
      written = await write(await records());
    }
  }
  if (process.stderr.isTTY) process.stderr.write('\n');
  if (summary === undefined) {
    console.error(`floe produce: ${formatCount(written)} records appended to stream "${options.stream}"`);
  } else {
    const overtaken =
      summary.overtaken === 0
        ? ''
        : ` (${formatCount(summary.overtaken)} of them after a later record of their partition key)`;
    console.error(
      `floe produce: ${formatCount(summary.records)} records (${formatCount(summary.bytes)} bytes) put to Kinesis stream "${options.stream}" in ${formatCount(summary.requests)} PutRecords requests, ${formatCount(summary.retried)} records retried${overtaken}`,
    );
  }
  return 0;
}

/** The flags of `floe produce` that only one backend takes (refused as `floe run` refuses its own). */
const PRODUCE_BACKEND_FLAGS: BackendOnlyFlags = {
  awsOnly: {
    'create-resources':
      'on the embedded backend floe produce creates a missing stream itself (with --shards N)',
  },
  embeddedOnly: {
    'data-dir':
      '--data-dir is for the embedded backend; on --backend aws name the Kinesis stream with --stream',
    'retention-hours':
      '--retention-hours applies to the embedded backend; a Kinesis stream keeps its own retention (aws kinesis increase-stream-retention-period)',
  },
};
