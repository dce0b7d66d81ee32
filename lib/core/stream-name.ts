/**
 * Stream names, Kinesis' rule for both backends: the one definition, pure (no I/O), so that the
 * CLI checks its flags without loading a backend.
 */
import { ConfigurationError, describeValue } from './errors.ts';

const STREAM_NAME_PATTERN = /^[a-zA-Z0-9_.-]{1,128}$/;

/** What a stream name is, for messages. */
export const STREAM_NAME_RULE =
  'a stream name is 1 to 128 characters of letters, digits, "_", "." and "-" (as in Kinesis)';

export function isStreamName(value: unknown): value is string {
  return typeof value === 'string' && STREAM_NAME_PATTERN.test(value);
}

/** Throws a ConfigurationError unless `name` is a valid stream name. */
export function checkStreamName(name: unknown): string {
  if (!isStreamName(name))
    throw new ConfigurationError(`${STREAM_NAME_RULE}; received ${describeValue(name)}`);
  return name;
}
