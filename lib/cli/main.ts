/** The `floe` command. Errors are one line on stderr with a non-zero exit, never a stack trace. */
import { FloeError } from '../core/index.ts';
import { simulate, simulateOutputLine } from '../runtime/simulate.ts';
import { MAX_SHARDS, parseFlags, positiveInt, UsageError } from './args.ts';
import { checkInputPath, checkOutputPath, inputLines, type OutputFile, openOutput } from './files.ts';
import { loadPipeline } from './load-pipeline.ts';

const USAGE = `floe — stateful stream processing with Flink semantics

Usage:
  floe demo                                  generate a clickstream and run the examples (npm start)
  floe produce --stream <name> (--file <f> | --generate clickstream) [--backend embedded|aws] [options]
  floe run <pipeline.ts> [--backend embedded|aws] [--stream <name>] [--job <id>] [--until-idle]
  floe status --job <id> [--backend embedded|aws] [--stream <name>] [--json]
  floe savepoint create --job <id> [--stop] | list | inspect <id> | delete <id>
  floe replay --from-savepoint <id> [--as-job <new-id>] [--pipeline <pipeline.ts>]
  floe replay --from-timestamp <time> --pipeline <pipeline.ts> [--as-job <id>]
  floe replay --abandon --job <id>           give up an unfinished restore
  floe simulate <pipeline.ts> --input <events.ndjson|-> [--output <file>] [--shards N] [--end-of-input]
  floe help

Run 'floe <command> --help' for details. Documentation: docs/cli.md`;

const SIMULATE_HELP = `floe simulate <pipeline.ts> --input <events.ndjson|-> [options]

Runs the pipeline (the module's default export) in memory and writes every emitted element as
one NDJSON line {"sink": "<name>", "value": <element>}, in emission order.

Input lines (each exactly one of these, with only these fields; blank lines and a UTF-8 BOM at
the start are skipped):
  {"partitionKey": "k", "data": <any JSON>, "shard"?: "shardId-000000000000" | 0, "arrival"?: <ms>}
  {"partitionKey": "k", "raw": "<payload string>", "shard"?: ..., "arrival"?: ...}
                                                     a payload that is not JSON-encoded
  {"watermark": <ms>, "shard"?: ...}                 advance the watermark to at least <ms>
  {"processingTime": <ms>}                           advance processing time (timers, idleness)
  {"restart": true}                                  serialize all state, drop it, continue from it
Times (<ms>) are whole epoch milliseconds. An invalid line stops the run (exit 1) after the
lines before it have run and their outputs have been written.

Options:
  --input, -i <file>   NDJSON input, or - for stdin (required)
  --output, -o <file>  write outputs to a file instead of stdout (created once the input is open)
  --shards <N>         hash records over N shards by partition key, like Kinesis: 1 to 1024 (default 1)
  --end-of-input       at the end, advance watermarks to +Infinity so every window fires
Special sinks: floe.dead-letter (records that could not be processed), floe.late (late data).`;

async function runSimulate(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags('simulate', {
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
  const shards = positiveInt('--shards', values.shards, 1, MAX_SHARDS);
  if (values.output !== undefined) checkOutputPath(values.output, '--output');
  checkInputPath(values.input, '--input');
  const pipeline = await loadPipeline(positionals[0]);
  // The input opens first: a missing input leaves an existing --output file as it was.
  const lines = await inputLines(values.input, '--input');
  const out: OutputFile =
    values.output === undefined
      ? { write: (text) => void process.stdout.write(text), close: async () => {} }
      : await openOutput(values.output, '--output', values.input);
  let result: { records: number; outputs: number };
  try {
    result = await simulate(pipeline, lines, {
      shards,
      endOfInput: values['end-of-input'],
      onOutput: (o) => out.write(`${simulateOutputLine(o)}\n`),
    });
  } catch (error) {
    // The outputs of the lines before the error stay in the file, as they would on stdout.
    await out.close().catch(() => {});
    throw error;
  }
  await out.close();
  if (values.output !== undefined) {
    console.error(
      `floe simulate: ${result.records} records in, ${result.outputs} outputs written to ${values.output}`,
    );
  }
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // An empty AWS_REGION (`AWS_REGION= floe ...`) means no region, as an unset one does: the AWS
  // SDK would otherwise take "" as the region and fail on the endpoint's host name.
  if (process.env.AWS_REGION === '') delete process.env.AWS_REGION;
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
        // No command is a usage error: the usage goes to stderr, stdout stays empty.
        console.error(USAGE);
        return 2;
      case 'help':
      case '--help':
      case '-h':
        console.log(USAGE);
        return 0;
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
      // node's parseArgs reads "--shards -3" as an option without its value and says so at length.
      const ambiguous = /^Option '(--[\w-]+)' argument is ambiguous/.exec(error.message);
      const message =
        ambiguous === null
          ? error.message.replace(/\s*\n\s*/g, ' ')
          : `${ambiguous[1]} is followed by a value starting with "-", which reads as another option; write ${ambiguous[1]}=<value> for such a value`;
      console.error(`floe: ${message}`);
      return 2;
    }
    console.error(`floe: unexpected error: ${error instanceof Error ? error.message : String(error)}`);
    if (process.env.FLOE_DEBUG) console.error(error);
    return 1;
  }
}
