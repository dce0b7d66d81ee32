/** Shared argument helpers for the floe commands. */
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { ConfigurationError, checkSavepointId, isEventTime } from '../core/index.ts';
import { isJobId, JOB_ID_RULE } from '../core/job-id.ts';
import { isStreamName, STREAM_NAME_RULE } from '../core/stream-name.ts';

/** A bad command line: exit code 2. */
export class UsageError extends ConfigurationError {}

/**
 * Shards of a stream of the embedded local log (lib/embedded/local-log.ts) and of `floe
 * simulate`'s in-memory driver; kept here so `simulate` does not load SQLite.
 */
export const MAX_SHARDS = 1024;

/**
 * The most records one read returns: Kinesis GetRecords' limit, which the embedded local log
 * enforces too (lib/embedded/local-log.ts MAX_READ_LIMIT), so a larger --batch-size would only
 * fail once the job had started.
 */
export const MAX_BATCH_SIZE = 10_000;

/**
 * The longest --lease-ttl: Node's longest timer delay, 2^31 - 1 ms (about 24.8 days). A
 * savepoint renews its hold every third of it with setInterval, which runs a longer delay as
 * 1 ms (printing a TimeoutOverflowWarning), and a lease's expiry must stay a printable time.
 */
export const MAX_LEASE_TTL = 2_147_483_647;

/** Edit distance (insertions, deletions, substitutions, transpositions of neighbours). */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i]!;
      const prev = d[i - 1]!;
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j]!, d[i - 2]![j - 2]! + 1);
      }
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * node's parseArgs for the command `command` ('run', 'savepoint create', ...), with an unknown
 * option reported as a usage error that names the command and the closest option it has (a
 * typo: `--untl-idle`, `--data_dir`), instead of node's advice to put it after `--`.
 */
export function parseFlags<T extends ParseArgsConfig>(
  command: string,
  config: T,
): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const unknown = /^Unknown option '([^']+)'/.exec((error as Error).message)?.[1];
    if (code !== 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || unknown === undefined) throw error;
    const name = unknown.replace(/^-+/, '').replace(/_/g, '-');
    const known = Object.keys(config.options ?? {});
    const closest = known
      .map((option) => ({ option, distance: editDistance(name, option) }))
      .filter(({ option, distance }) => distance <= Math.max(1, Math.floor(option.length / 4)))
      .sort((a, b) => a.distance - b.distance)[0]?.option;
    const hint = closest === undefined ? '' : ` (did you mean --${closest}?)`;
    throw new UsageError(
      `unknown option ${unknown} for 'floe ${command}'${hint}; see 'floe ${command} --help'`,
    );
  }
}

/**
 * A whole-number flag's value, written in decimal digits: `Number()` also reads "1e1", "0x2",
 * "+3", " 2" and "2.0" as whole numbers, which a user would not expect `--shards` to take.
 * Above 2^53 - 1 whole numbers are no longer exact: those are refused too, saying so.
 */
function wholeNumber(flag: string, value: string, min: 0 | 1, max: number | undefined): number {
  const n = /^[0-9]+$/.test(value) ? Number(value) : Number.NaN;
  if (n >= min && n <= (max ?? Number.MAX_SAFE_INTEGER)) return n;
  const range =
    max !== undefined
      ? `from ${min} to ${max}`
      : n > Number.MAX_SAFE_INTEGER
        ? `from ${min} to ${Number.MAX_SAFE_INTEGER}`
        : `>= ${min}`;
  // "1e1" or "0x2": say how to write the number it meant.
  const meant = Number(value);
  const hint =
    Number.isNaN(n) && value.trim() !== '' && Number.isSafeInteger(meant) && meant >= min
      ? ` (write it in decimal digits: ${meant})`
      : '';
  throw new UsageError(`${flag} must be a whole number ${range}; received "${value}"${hint}`);
}

/** A whole number >= 1 (and <= `max` when given), or `fallback` when the flag is absent. */
export function positiveInt(flag: string, value: string | undefined, fallback: number, max?: number): number {
  return value === undefined ? fallback : wholeNumber(flag, value, 1, max);
}

/** A whole number >= 0, or `fallback` when the flag is absent. */
export function nonNegativeInt(flag: string, value: string | undefined, fallback: number): number {
  return value === undefined ? fallback : wholeNumber(flag, value, 0, undefined);
}

/**
 * A plain decimal: digits with an optional fractional part ("0", "0.05", "1"), or a fractional
 * part alone (".5", as probabilities are often written). A trailing point ("0.") is refused: it
 * looks like digits were lost.
 */
const PLAIN_DECIMAL = /^(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)$/;

/**
 * A fraction flag's value from 0 to 1, or `fallback` when the flag is absent. Written as a plain
 * decimal (PLAIN_DECIMAL): `Number()` also reads "1e-1", "0x0", " .5", "+0.1" and "-0", which a
 * user would not expect `--late` to take.
 */
export function fraction(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = PLAIN_DECIMAL.test(value) ? Number(value) : Number.NaN;
  if (n >= 0 && n <= 1) return n;
  // "1e-1" or "+0.1": say how to write the number it meant, when it can be written plainly.
  const meant = String(Number(value));
  const hint =
    Number.isNaN(n) && value.trim() !== '' && PLAIN_DECIMAL.test(meant) && Number(meant) <= 1
      ? ` (write it as a plain decimal: ${meant})`
      : '';
  throw new UsageError(
    `${flag} must be a number from 0 to 1, written as a plain decimal (0, 0.05, .5 or 1); received "${value}"${hint}`,
  );
}

export function oneOf<T extends string>(
  flag: string,
  value: string | undefined,
  allowed: readonly T[],
  fallback: T,
): T {
  if (value === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(value)) {
    throw new UsageError(`${flag} must be one of ${allowed.join(', ')}; received "${value}"`);
  }
  return value as T;
}

/** The --backend value: embedded (the default) or aws, else a usage error. */
export function backendKind(values: { readonly backend?: string | undefined }): 'embedded' | 'aws' {
  return oneOf('--backend', values.backend, ['embedded', 'aws'], 'embedded');
}

/** The flags of a command that only one backend takes (checkBackendFlagsOf). */
export interface BackendOnlyFlags {
  /** Flags only `--backend aws` takes: what to do instead on the embedded backend. */
  readonly awsOnly: Readonly<Record<string, string>>;
  /** Flags only the embedded backend takes: the whole message on `--backend aws`. */
  readonly embeddedOnly: Readonly<Record<string, string>>;
}

/**
 * Refuses the flags the chosen backend would ignore (`flags`), and on AWS a `--shards` without
 * `--create-resources` (an existing stream keeps its shards).
 */
export function checkBackendFlagsOf(
  backend: 'embedded' | 'aws',
  values: { readonly [flag: string]: unknown },
  flags: BackendOnlyFlags,
): void {
  const given = (flag: string): boolean => values[flag] !== undefined && values[flag] !== false;
  if (backend === 'embedded') {
    for (const [flag, instead] of Object.entries(flags.awsOnly)) {
      if (given(flag)) throw new UsageError(`--${flag} applies to --backend aws only; ${instead}`);
    }
    return;
  }
  for (const [flag, message] of Object.entries(flags.embeddedOnly)) {
    if (given(flag)) throw new UsageError(message);
  }
  if (given('shards') && !given('create-resources')) {
    throw new UsageError(
      '--shards is the shard count of a stream that --create-resources creates; pass --create-resources too (an existing stream keeps its shards)',
    );
  }
}

/**
 * A job id given as `flag` (`--job`, `--as-job`), or undefined when the flag is absent: a value
 * that is not a job id is a usage error naming the flag and saying what a job id is.
 */
export function jobIdFlag(flag: string, value: string): string;
export function jobIdFlag(flag: string, value: string | undefined): string | undefined;
export function jobIdFlag(flag: string, value: string | undefined): string | undefined {
  if (value === undefined || isJobId(value)) return value;
  throw new UsageError(`${flag}: ${JOB_ID_RULE}; received "${value}"`);
}

/**
 * The --stream value, or undefined when the flag is absent: a value that is not a stream name is a
 * usage error, found before anything is opened or created.
 */
export function streamFlag(value: string): string;
export function streamFlag(value: string | undefined): string | undefined;
export function streamFlag(value: string | undefined): string | undefined {
  if (value === undefined || isStreamName(value)) return value;
  throw new UsageError(`--stream: ${STREAM_NAME_RULE}; received "${value}"`);
}

/**
 * A savepoint id given on the command line (`what`: the flag or argument): one that cannot be an
 * id is a usage error, checked before any backend is opened.
 */
export function savepointIdArg(what: string, value: string): string {
  try {
    return checkSavepointId(value);
  } catch (error) {
    throw new UsageError(`${what}: ${(error as Error).message}`);
  }
}

export function formatTime(t: number): string {
  if (t === Number.NEGATIVE_INFINITY) return '-inf';
  if (t === Number.POSITIVE_INFINITY) return '+inf';
  // A watermark or timer may lie past a Date's range (±8.64e15 ms): a timestamp there minus the
  // out-of-orderness bound. toISOString would throw a RangeError ("Invalid time value").
  if (!isEventTime(t)) return `${t} ms`;
  return new Date(t).toISOString().replace('.000Z', 'Z');
}

export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

/**
 * Wraps a periodic, synchronous job so that it takes at most `share` of the wall time: after a
 * call that took d ms, calls in the next d / share ms are skipped. The progress views count log
 * records in SQLite, which takes longer the longer the stream (over half a second at 1M records):
 * run every 250 ms, they would leave the workers of the same process little time.
 */
export function throttled(fn: () => void, share = 0.1, clock: () => number = Date.now): () => void {
  let next = Number.NEGATIVE_INFINITY;
  return () => {
    const start = clock();
    if (start < next) return;
    fn();
    next = start + (clock() - start) / share;
  };
}

/** A text progress bar of `width` cells. */
export function bar(fraction: number, width = 30): string {
  const f = Math.max(0, Math.min(1, fraction));
  const full = Math.round(f * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${(f * 100).toFixed(0).padStart(3)}%`;
}

/**
 * runJob's onLeaseBusy for the CLI: says why a shard stopped and is run again next round (another
 * worker's lease, throttling, a sink that keeps failing), once per shard and kind of failure, so
 * that a run that does not progress says why instead of retrying without a word.
 */
export function retryNotice(write: (line: string) => void): (shardId: string, error: Error) => void {
  const said = new Map<string, string>();
  return (shardId, error) => {
    // The digits are times and counts (a lease's expiry, attempts): the same failure again.
    const kind = `${error.name}: ${error.message.replace(/\d+/g, '#')}`;
    if (said.get(shardId) === kind) return;
    said.set(shardId, kind);
    write(`  ${shardId}: ${error.message}; retrying`);
  };
}

/**
 * runJob's onCheckedRetry for the CLI: the line saying that a shard's uncommitted records are
 * processed again in the checked pass, and why (the record or value, the first clause of the
 * error's message).
 */
export function checkedRetryLine(error: Error): string {
  return `  ${error.message.split('; ')[0]}: processing the uncommitted records again in the checked pass`;
}

/**
 * The warning a command prints when `--generation` named another generation than the one it
 * used for a job without a record: the job's id was freed by an abandoned restore, so the job
 * starts past the generations that restore may have written (firstGeneration), as its workers
 * do. Undefined when the flag was not given or was used.
 */
export function raisedGenerationWarning(
  command: string,
  job: string,
  flag: number | undefined,
  used: number,
): string | undefined {
  if (flag === undefined || flag === used) return undefined;
  return `floe ${command}: warning: --generation ${flag}: job ${job} has no job record and its id was freed by an abandoned restore, which may have written up to generation ${used - 1}; using generation ${used}, as its workers do`;
}

/**
 * `--generation` names the state generation of a job that has no job record yet (a Lambda job
 * deployed with the construct's `generation`). Once the job has a record, the record decides
 * (a replay moves it); a flag naming another generation is refused rather than ignored.
 */
export function checkGenerationFlag(
  job: string,
  generation: number | undefined,
  record: { readonly generation: number } | undefined,
): void {
  if (generation === undefined || record === undefined || record.generation === generation) return;
  throw new ConfigurationError(
    `--generation ${generation}: job "${job}" has a job record, which names generation ${record.generation} (a replay moves it); drop --generation, which is only for a job without a record`,
  );
}
