/**
 * Typed errors. Every error says what was wrong, what was received and how to fix it.
 * `RetryableError`s are transient (retry the same work); `TerminalError`s are not (fix the
 * input, the pipeline or the configuration first).
 */
export abstract class FloeError extends Error {
  abstract readonly retryable: boolean;
  /** A stable machine-readable code, e.g. `PIPELINE_DEFINITION`. */
  abstract readonly code: string;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export abstract class TerminalError extends FloeError {
  readonly retryable = false;
}

export abstract class RetryableError extends FloeError {
  readonly retryable = true;
}

/** The pipeline built with the DSL is not valid. Raised while building or compiling it. */
export class PipelineDefinitionError extends TerminalError {
  readonly code = 'PIPELINE_DEFINITION';
}

/** A configuration value (CLI flag, option, prop) is invalid. */
export class ConfigurationError extends TerminalError {
  readonly code = 'CONFIGURATION';
}

/** State, a checkpoint or a savepoint cannot be read back: corrupted or of another format. */
export class StateFormatError extends TerminalError {
  readonly code = 'STATE_FORMAT';
}

/**
 * A value that must be stored is not JSON-serializable, or a state entry is larger than the
 * store holds (StateStore.maxEntryBytes). The shard worker then processes the uncommitted
 * batches again in a checked pass (ShardTaskOptions.checked) that dead-letters their records.
 */
export class StateSerializationError extends TerminalError {
  readonly code = 'STATE_SERIALIZATION';
}

/**
 * A keyed record or timer failed after reading state objects, which it may have changed in
 * place: rolling it back restores which object each state holds, not what is in the object. The
 * task's state is not exact any more; discard the task and process the uncommitted batches again
 * from the last commit in a checked pass (ShardTaskOptions.checked), which copies state on read
 * and so dead-letters the record exactly. The shard worker and the test driver do that.
 */
export class RollbackNeedsReplayError extends TerminalError {
  readonly code = 'ROLLBACK_NEEDS_REPLAY';
}

/**
 * Another invocation holds the shard's lease now (our fencing token is stale). Usually the
 * commit was rejected and nothing of it is visible. On the S3 delta path a commit can pass its
 * commit point and lose the lease during its apply; then the commit took effect and the new
 * holder finishes it and publishes its outputs. Either way the invocation must stop without
 * publishing: the new lease holder resumes from the last commit.
 */
export class FencedError extends TerminalError {
  readonly code = 'FENCED';
}

/**
 * Outputs that no retry can publish to their sink: too large for it, or without a valid key.
 * Sinks check every output before they send any and reject all such outputs in one error, with
 * the reason for each, so that the rest can still be published: RoutingSink sends the rejected
 * ones to the dead-letter output (reason `sink`) instead of failing the shard's publish forever
 * (a committed output cannot be changed). An error naming no output fails the publish.
 */
export class SinkOutputError extends TerminalError {
  readonly code = 'SINK_OUTPUT';
  /** Output id -> why that output cannot be published. */
  readonly rejected: ReadonlyMap<string, string>;

  constructor(message: string, options?: { cause?: unknown; outputId?: string }) {
    super(message, options);
    this.rejected = new Map(options?.outputId === undefined ? [] : [[options.outputId, message]]);
  }

  /** One error for the outputs of several (each naming its outputs). */
  static combine(errors: readonly SinkOutputError[]): SinkOutputError {
    if (errors.length === 1) return errors[0]!;
    const more = errors.length - 1;
    const combined = new SinkOutputError(
      `${errors[0]?.message} (and ${more} more rejected output${more === 1 ? '' : 's'})`,
      { cause: errors[0] },
    );
    const rejected = combined.rejected as Map<string, string>;
    for (const e of errors) for (const [id, reason] of e.rejected) rejected.set(id, reason);
    return combined;
  }
}

/** The lease is held by another live owner; try again after it expires or is released. */
export class LeaseUnavailableError extends RetryableError {
  readonly code = 'LEASE_UNAVAILABLE';
}

/** A transient failure of a backend (throttling, timeouts, conflicts). */
export class TransientBackendError extends RetryableError {
  readonly code = 'TRANSIENT_BACKEND';
}

/** Describe a received value briefly for error messages. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return 'a function';
  if (isPromiseLike(value)) return 'a Promise';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  try {
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
  } catch {
    return Object.prototype.toString.call(value);
  }
}

/** Why pipeline functions must not be async, and what to do instead (build and run time errors). */
export const SYNCHRONOUS_FUNCTIONS =
  'floe calls pipeline functions synchronously, inside a commit, and cannot wait for a Promise: do asynchronous work (lookups, HTTP calls) before the records reach the stream, or after a sink';

/** A Promise or any other thenable: what an async function returns. */
export function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return (
    typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function'
  );
}

/** `value` when it is a whole number >= 1; else a ConfigurationError naming `subject`. */
export function wholeNumberOption(subject: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new ConfigurationError(`${subject} must be a whole number >= 1; received ${describeValue(value)}`);
  }
  return value;
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return describeValue(error);
}
