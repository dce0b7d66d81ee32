/** The `floe` command. Errors are one line on stderr with a non-zero exit, never a stack trace. */
import { createReadStream, createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { ConfigurationError, FloeError } from '../core/index.ts';
import { simulate } from '../runtime/simulate.ts';
import { positiveInt, UsageError } from './args.ts';
import { loadPipeline } from './load-pipeline.ts';

const USAGE = `floe — stateful stream processing with Flink semantics

Usage:
  floe demo                                  generate a clickstream and run the examples (npm start)
  floe produce --stream <name> (--file <f> | --generate clickstream) [options]
  floe run <pipeline.ts> [--backend embedded|aws] [--stream <name>] [--job <id>] [--until-idle]
  floe status --job <id> [--backend embedded|aws] [--stream <name>] [--json]
  floe savepoint create --job <id> [--stop] | list | inspect <id> | delete <id>
  floe replay --from-savepoint <id> [--as-job <new-id>] [--pipeline <pipeline.ts>]
  floe replay --from-timestamp <time> --pipeline <pipeline.ts> [--as-job <id>]
  floe simulate <pipeline.ts> --input <events.ndjson|-> [--output <file>] [--shards N] [--end-of-input]
  floe help

Run 'floe <command> --help' for details. Documentation: docs/cli.md`;

const SIMULATE_HELP = `floe simulate <pipeline.ts> --input <events.ndjson|-> [options]

Runs the pipeline (the module's default export) in memory and writes every emitted element as
one NDJSON line {"sink": "<name>", "value": <element>}, in emission order.

Input lines:
  {"partitionKey": "k", "data": <any JSON>, "shard"?: "shardId-000000000000" | 0, "arrival"?: <ms>}
  {"partitionKey": "k", "raw": "<payload string>"}   a payload that is not JSON-encoded
  {"watermark": <ms>, "shard"?: ...}                 advance the watermark to at least <ms>
  {"processingTime": <ms>}                           advance processing time (timers, idleness)
  {"restart": true}                                  serialize all state, drop it, continue from it

Options:
  --input, -i <file>   NDJSON input, or - for stdin (required)
  --output, -o <file>  write outputs to a file instead of stdout
  --shards <N>         hash records over N shards by partition key, like Kinesis (default 1)
  --end-of-input       at the end, advance watermarks to +Infinity so every window fires
Special sinks: floe.dead-letter (records that could not be processed), floe.late (late data).`;

async function* readLines(path: string): AsyncIterable<string> {
  const input = path === '-' ? process.stdin : createReadStream(path);
  const opened = new Promise<void>((resolve, reject) => {
    if (path === '-') resolve();
    input.once('open', () => resolve());
    input.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new ConfigurationError(
          error.code === 'ENOENT' ? `input file not found: ${path}` : `cannot read ${path}: ${error.message}`,
        ),
      ),
    );
  });
  await opened;
  yield* createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
}

async function runSimulate(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      input: { type: 'string', short: 'i' },
      output: { type: 'string', short: 'o' },
      shards: { type: 'string' },
      'end-of-input': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SIMULATE_HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UsageError(
      `simulate takes exactly one pipeline module; received ${positionals.length}. See 'floe simulate --help'.`,
    );
  }
  if (values.input === undefined)
    throw new UsageError("simulate needs --input <events.ndjson> (or '-' for stdin)");
  const shards = positiveInt('--shards', values.shards, 1);
  const pipeline = await loadPipeline(positionals[0]);
  const out = values.output === undefined ? process.stdout : createWriteStream(values.output);
  const result = await simulate(pipeline, readLines(values.input), {
    shards,
    endOfInput: values['end-of-input'],
    onOutput: (o) => {
      out.write(`${JSON.stringify({ sink: o.sink, value: o.value })}\n`);
    },
  });
  if (out !== process.stdout) {
    await new Promise<void>((resolve, reject) =>
      out.end((error?: Error | null) => (error ? reject(error) : resolve())),
    );
    console.error(
      `floe simulate: ${result.records} records in, ${result.outputs} outputs written to ${values.output}`,
    );
  }
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'simulate':
        return await runSimulate(rest);
      case 'produce':
        return await (await import('./produce.ts')).runProduce(rest);
      case 'run':
        return await (await import('./run.ts')).runRun(rest);
      case 'status':
        return await (await import('./status.ts')).runStatus(rest);
      case 'demo':
        return await (await import('./demo.ts')).runDemo(rest);
      case 'savepoint':
        return await (await import('./savepoint.ts')).runSavepoint(rest);
      case 'replay':
        return await (await import('./replay.ts')).runReplay(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        console.log(USAGE);
        return command === undefined ? 1 : 0;
      default:
        throw new UsageError(
          `unknown command "${command}". Commands: demo, produce, run, status, savepoint, replay, simulate. See 'floe help'.`,
        );
    }
  } catch (error) {
    if (error instanceof FloeError) {
      console.error(`floe: ${error.message.replace(/\s*\n\s*/g, ' ')}`);
      return error instanceof UsageError ? 2 : 1;
    }
    if (error instanceof TypeError && (error as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`floe: ${error.message.replace(/\s*\n\s*/g, ' ')}`);
      return 2;
    }
    console.error(`floe: unexpected error: ${error instanceof Error ? error.message : String(error)}`);
    if (process.env.FLOE_DEBUG) console.error(error);
    return 1;
  }
}
