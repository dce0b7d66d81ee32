/**
 * Binding a pipeline's sink names to AWS destinations from text (CLI flags, a JSON file, an
 * environment variable):
 *
 *   page-view-counts=dynamodb:PageViewCounts?key=page,windowStart
 *   alerts=kinesis:alerts-stream?partitionKey=user
 *   floe.dead-letter=s3:my-bucket/dead-letters/
 *   *=s3://my-bucket/other/                       (the fallback for every other sink)
 *
 * Grammar: `SINK=TYPE:DESTINATION[?PARAM=VALUE[&PARAM=VALUE]...]`, split at the first '='
 * (so sink names cannot contain '=': the DSL refuses them, see unbindableSinkName), TYPE one of
 * kinesis | dynamodb | s3.
 *   kinesis:STREAM (name or ARN)       partitionKey=FIELD (top-level field of the value; default: output id)
 *   dynamodb:TABLE (name or ARN)       key=FIELD[,FIELD] (required: the table's key attributes, taken from the
 *                                      value's top-level fields), value=ATTRIBUTE (store the whole value there),
 *                                      ordered=true|false (conditional writes keeping each shard's output order;
 *                                      default true; false: BatchWriteItem, last writer wins)
 *   s3:BUCKET[/PREFIX] or s3://...     merge=true|false; the prefix gets a trailing '/' when it has none
 * JSON: an array of such strings, or an object {"SINK": "TYPE:DESTINATION?..."}.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import type { S3Client } from '@aws-sdk/client-s3';
import { ConfigurationError, describeValue } from '../core/errors.ts';
import type { Sink } from '../core/ports.ts';
import { isStreamName } from '../core/stream-name.ts';
import {
  DynamoDbUpsertSink,
  KinesisStreamSink,
  RoutingSink,
  S3ObjectSink,
  SinkOutputError,
} from './sinks.ts';

/** The sink name that binds the fallback destination. */
export const FALLBACK_SINK = '*';

export type SinkDestination =
  | { readonly type: 'kinesis'; readonly stream: string; readonly partitionKey?: string }
  | {
      readonly type: 'dynamodb';
      readonly table: string;
      readonly key: readonly string[];
      readonly valueAttribute?: string;
      /** DynamoDbUpsertSinkOptions.conditionalWrites. */
      readonly ordered?: boolean;
    }
  | { readonly type: 's3'; readonly bucket: string; readonly prefix: string; readonly merge?: boolean };

export type SinkBinding = SinkDestination & {
  /** The DSL sink name, or '*' for the fallback. */
  readonly sink: string;
  /** The text it was parsed from. */
  readonly spec: string;
};

const EXAMPLE =
  'expected SINK=TYPE:DESTINATION, e.g. page-view-counts=dynamodb:PageViewCounts?key=page,windowStart, alerts=kinesis:alerts, floe.dead-letter=s3:bucket/dead-letters/';
const TYPES = ['kinesis', 'dynamodb', 's3'] as const;
const PARAMS: Record<(typeof TYPES)[number], readonly string[]> = {
  kinesis: ['partitionKey'],
  dynamodb: ['key', 'value', 'ordered'],
  s3: ['merge'],
};

function fail(spec: string, problem: string): never {
  throw new ConfigurationError(`invalid sink binding ${JSON.stringify(spec)}: ${problem}`);
}

/** Parses one `SINK=TYPE:DESTINATION[?PARAMS]` binding. */
export function parseSinkSpec(spec: string): SinkBinding {
  if (typeof spec !== 'string') {
    throw new ConfigurationError(
      `a sink binding must be a string; received ${describeValue(spec)}; ${EXAMPLE}`,
    );
  }
  const text = spec.trim();
  const eq = text.indexOf('=');
  if (eq < 0) fail(spec, `no '=' between the sink name and its destination; ${EXAMPLE}`);
  const sink = text.slice(0, eq).trim();
  if (sink.length === 0) fail(spec, `the sink name before '=' is empty; ${EXAMPLE}`);
  return { ...parseDestination(text.slice(eq + 1).trim(), spec), sink, spec };
}

/** Parses `TYPE:DESTINATION[?PARAMS]` (the part after `SINK=`). */
export function parseDestination(destination: string, spec: string = destination): SinkDestination {
  const colon = destination.indexOf(':');
  if (colon < 0) {
    fail(
      spec,
      `the destination ${JSON.stringify(destination)} has no TYPE: prefix (one of ${TYPES.join(', ')}); ${EXAMPLE}`,
    );
  }
  const type = destination.slice(0, colon).trim().toLowerCase();
  if (!(TYPES as readonly string[]).includes(type)) {
    fail(
      spec,
      `unknown destination type ${JSON.stringify(destination.slice(0, colon))}; expected one of ${TYPES.join(', ')}`,
    );
  }
  const rest = destination.slice(colon + 1);
  const q = rest.indexOf('?');
  const target = (q < 0 ? rest : rest.slice(0, q)).trim();
  const params = parseParams(q < 0 ? '' : rest.slice(q + 1), spec, type as (typeof TYPES)[number]);
  switch (type as (typeof TYPES)[number]) {
    case 'kinesis': {
      if (!target.startsWith('arn:') && !isStreamName(target)) {
        fail(
          spec,
          `Kinesis stream name ${JSON.stringify(target)} must be 1-128 characters of a-z A-Z 0-9 _ . - (or a stream ARN)`,
        );
      }
      const partitionKey = params.get('partitionKey');
      if (partitionKey !== undefined) checkField(spec, 'partitionKey', partitionKey);
      return { type: 'kinesis', stream: target, ...(partitionKey !== undefined ? { partitionKey } : {}) };
    }
    case 'dynamodb': {
      if (!target.startsWith('arn:') && !/^[a-zA-Z0-9_.-]{3,255}$/.test(target)) {
        fail(
          spec,
          `DynamoDB table name ${JSON.stringify(target)} must be 3-255 characters of a-z A-Z 0-9 _ . - (or a table ARN)`,
        );
      }
      const keyText = params.get('key');
      if (keyText === undefined) {
        fail(
          spec,
          "a dynamodb destination needs ?key=FIELD[,FIELD]: the table's partition (and sort) key, taken from the value's fields",
        );
      }
      const key = keyText.split(',').map((f) => f.trim());
      if (key.length > 2)
        fail(
          spec,
          `key= names ${key.length} fields; a DynamoDB key has 1 (partition) or 2 (partition, sort)`,
        );
      for (const field of key) checkField(spec, 'key', field);
      if (new Set(key).size !== key.length) fail(spec, `key= names a field twice: ${keyText}`);
      const valueAttribute = params.get('value');
      if (valueAttribute !== undefined) checkField(spec, 'value', valueAttribute);
      const orderedText = params.get('ordered');
      if (orderedText !== undefined && orderedText !== 'true' && orderedText !== 'false') {
        fail(spec, `ordered= must be true or false; received ${JSON.stringify(orderedText)}`);
      }
      return {
        type: 'dynamodb',
        table: target,
        key,
        ...(valueAttribute !== undefined ? { valueAttribute } : {}),
        ...(orderedText !== undefined ? { ordered: orderedText === 'true' } : {}),
      };
    }
    case 's3': {
      const path = target.startsWith('//') ? target.slice(2) : target;
      const slash = path.indexOf('/');
      const bucket = slash < 0 ? path : path.slice(0, slash);
      let prefix = slash < 0 ? '' : path.slice(slash + 1);
      if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
        fail(
          spec,
          `S3 bucket name ${JSON.stringify(bucket)} must be 3-63 characters of a-z 0-9 . - (expected s3:BUCKET[/PREFIX])`,
        );
      }
      if (prefix.startsWith('/'))
        fail(spec, `the S3 prefix ${JSON.stringify(prefix)} must not start with '/'`);
      if (prefix.length > 0 && !prefix.endsWith('/')) prefix += '/';
      const mergeText = params.get('merge');
      if (mergeText !== undefined && mergeText !== 'true' && mergeText !== 'false') {
        fail(spec, `merge= must be true or false; received ${JSON.stringify(mergeText)}`);
      }
      return {
        type: 's3',
        bucket,
        prefix,
        ...(mergeText !== undefined ? { merge: mergeText === 'true' } : {}),
      };
    }
  }
}

function parseParams(text: string, spec: string, type: (typeof TYPES)[number]): Map<string, string> {
  const params = new Map<string, string>();
  if (text.trim().length === 0) return params;
  const allowed = PARAMS[type];
  for (const part of text.split('&')) {
    const eq = part.indexOf('=');
    const name = (eq < 0 ? part : part.slice(0, eq)).trim();
    const value = eq < 0 ? '' : part.slice(eq + 1).trim();
    if (!allowed.includes(name)) {
      fail(
        spec,
        `unknown parameter ${JSON.stringify(name)} for a ${type} destination; allowed: ${allowed.join(', ')}`,
      );
    }
    if (value.length === 0) fail(spec, `parameter ${name}= has no value`);
    if (params.has(name)) fail(spec, `parameter ${name}= is given twice`);
    params.set(name, value);
  }
  return params;
}

function checkField(spec: string, param: string, field: string): void {
  if (!/^[^\s,&?=]{1,255}$/.test(field)) {
    fail(spec, `${param}= needs a field name without spaces , & ? =; received ${JSON.stringify(field)}`);
  }
}

/**
 * Parses bindings from CLI flags (an array of specs), a JSON text (an array of specs or an
 * object {sink: "TYPE:DESTINATION?..."}), one spec, or an already parsed JSON value. Specs in a
 * single string may also be separated by newlines or ';'. A sink bound twice is an error.
 */
export function parseSinkBindings(input: unknown): SinkBinding[] {
  let value = input;
  if (typeof value === 'string') {
    const text = value.trim();
    if (text.startsWith('[') || text.startsWith('{')) {
      try {
        value = JSON.parse(text);
      } catch (error) {
        throw new ConfigurationError(`the sink bindings are not valid JSON (${String(error)}); ${EXAMPLE}`, {
          cause: error,
        });
      }
    } else {
      value = text.split(/[\n;]/).filter((s) => s.trim().length > 0);
    }
  }
  let bindings: SinkBinding[];
  if (Array.isArray(value)) {
    bindings = value.map((spec) => parseSinkSpec(spec as string));
  } else if (value !== null && typeof value === 'object') {
    bindings = Object.entries(value as Record<string, unknown>).map(([sink, destination]) => {
      const spec = `${sink}=${String(destination)}`;
      if (typeof destination !== 'string') {
        fail(
          spec,
          `the destination of sink "${sink}" must be a string "TYPE:DESTINATION?..."; received ${describeValue(destination)}`,
        );
      }
      if (sink.trim().length === 0) fail(spec, 'the sink name is empty');
      return { ...parseDestination(destination.trim(), spec), sink: sink.trim(), spec };
    });
  } else {
    throw new ConfigurationError(
      `sink bindings must be a string, an array of strings or an object; received ${describeValue(value)}; ${EXAMPLE}`,
    );
  }
  if (bindings.length === 0) throw new ConfigurationError(`no sink bindings were given; ${EXAMPLE}`);
  const seen = new Map<string, string>();
  for (const b of bindings) {
    const before = seen.get(b.sink);
    if (before !== undefined) {
      throw new ConfigurationError(
        `sink "${b.sink}" is bound twice: ${JSON.stringify(before)} and ${JSON.stringify(b.spec)}; keep one`,
      );
    }
    seen.set(b.sink, b.spec);
  }
  return bindings;
}

/** Clients for the destinations; only those the bindings use are needed. */
export interface SinkClients {
  readonly kinesis?: KinesisClient;
  readonly dynamodb?: DynamoDBClient;
  readonly s3?: S3Client;
}

/** Reads a top-level field of an object value. */
function field(value: unknown, name: string, what: string): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new SinkOutputError(
      `${what} reads field "${name}" but the value is not an object: ${describeValue(value)}`,
    );
  }
  return (value as Record<string, unknown>)[name];
}

/** Builds the Sink of one binding. */
export function sinkFromBinding(binding: SinkBinding, clients: SinkClients): Sink {
  const need = <T>(client: T | undefined, service: string): T => {
    if (client === undefined) {
      throw new ConfigurationError(
        `sink "${binding.sink}" is bound to ${binding.type} (${JSON.stringify(binding.spec)}) but no ${service} client was given`,
      );
    }
    return client;
  };
  switch (binding.type) {
    case 'kinesis': {
      const pk = binding.partitionKey;
      const what = `the partitionKey of sink "${binding.sink}"`;
      return new KinesisStreamSink({
        client: need(clients.kinesis, 'Kinesis'),
        stream: binding.stream,
        ...(pk !== undefined
          ? {
              partitionKey: (value: unknown) => {
                const v = field(value, pk, what);
                if (typeof v === 'string') return v;
                if (typeof v === 'number' && Number.isFinite(v)) return String(v);
                throw new SinkOutputError(
                  `${what} needs field "${pk}" to be a string or number; received ${describeValue(v)}`,
                );
              },
            }
          : {}),
      });
    }
    case 'dynamodb': {
      const names = binding.key;
      const what = `the key of sink "${binding.sink}"`;
      return new DynamoDbUpsertSink({
        client: need(clients.dynamodb, 'DynamoDB'),
        table: binding.table,
        key: (value: unknown) => {
          const key: Record<string, string | number> = {};
          for (const name of names) {
            const v = field(value, name, what);
            if (typeof v !== 'string' && typeof v !== 'number') {
              throw new SinkOutputError(
                `${what} needs field "${name}" to be a string or number; received ${describeValue(v)}`,
              );
            }
            key[name] = v;
          }
          return key;
        },
        ...(binding.valueAttribute !== undefined ? { valueAttribute: binding.valueAttribute } : {}),
        ...(binding.ordered !== undefined ? { conditionalWrites: binding.ordered } : {}),
      });
    }
    case 's3':
      return new S3ObjectSink({
        client: need(clients.s3, 'S3'),
        bucket: binding.bucket,
        prefix: binding.prefix,
        ...(binding.merge !== undefined ? { merge: binding.merge } : {}),
      });
  }
}

export interface RoutingSinkFromSpecsOptions {
  /** Fallback for sinks without a binding (a `*=` binding takes precedence). */
  readonly fallback?: Sink;
  /** The sinks the pipeline writes (e.g. `plan.sinks`): each must be bound unless there is a fallback. */
  readonly requiredSinks?: Iterable<string>;
}

/** Parses bindings (see parseSinkBindings) and builds the RoutingSink over them. */
export function routingSinkFromSpecs(
  input: unknown,
  clients: SinkClients,
  options: RoutingSinkFromSpecsOptions = {},
): RoutingSink {
  const bindings =
    Array.isArray(input) && input.every((b) => typeof b === 'object' && b !== null && 'type' in b)
      ? (input as SinkBinding[])
      : parseSinkBindings(input);
  const routes = new Map<string, Sink>();
  let fallback = options.fallback;
  for (const binding of bindings) {
    const sink = sinkFromBinding(binding, clients);
    if (binding.sink === FALLBACK_SINK) fallback = sink;
    else routes.set(binding.sink, sink);
  }
  const routing = new RoutingSink(routes, fallback);
  if (options.requiredSinks !== undefined) routing.assertRoutes(options.requiredSinks);
  return routing;
}
