/**
 * Retries of transient AWS errors (throttling, 5xx, timeouts, dropped connections) with exponential
 * backoff and full jitter, bounded; when the attempts run out, a TransientBackendError (retryable: the
 * caller may try the whole unit of work again later).
 *
 * This sits on top of the SDK's own retries (3 attempts by default): the SDK gives up quickly on
 * sustained throttling, and errors injected outside its retry loop (see ./faults.ts) reach us directly.
 */
import { errorMessage, TransientBackendError } from '../core/index.ts';

/** Error names AWS services use for throttling (the SDK's list plus Kinesis/KMS variants). */
const THROTTLING_NAMES = new Set([
  'BandwidthLimitExceeded',
  'LimitExceededException',
  'PriorRequestNotComplete',
  'ProvisionedThroughputExceededException',
  'ProvisionedThroughputExceeded',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
  'ThrottledException',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'KMSThrottlingException',
  'TransactionInProgressException',
]);
const TRANSIENT_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalFailure',
  'InternalFailureException',
  'InternalServerError',
  'ServiceUnavailable',
  'ServiceUnavailableException',
]);
const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
]);

interface AwsErrorShape {
  name?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
  cause?: unknown;
}

/** True for errors worth retrying: throttling, HTTP 429/5xx, timeouts and dropped connections. */
export function isTransientAwsError(error: unknown, depth = 0): boolean {
  if (typeof error !== 'object' || error === null) return false;
  // Its cause is transient, but its deadline has passed: retrying would overrun it.
  if (error instanceof BackoffDeadlineError) return false;
  const e = error as AwsErrorShape;
  if (e.name === 'AbortError') return false;
  if (e.name !== undefined && (THROTTLING_NAMES.has(e.name) || TRANSIENT_NAMES.has(e.name))) return true;
  if (e.code !== undefined && NETWORK_CODES.has(e.code)) return true;
  const status = e.$metadata?.httpStatusCode;
  if (status === 429 || (status !== undefined && status >= 500 && status <= 599)) return true;
  if (e.$retryable !== undefined) return true;
  return depth < 5 && e.cause !== undefined && isTransientAwsError(e.cause, depth + 1);
}

export interface BackoffOptions {
  /** Retries after the first attempt before giving up. @default 8 */
  readonly maxRetries?: number;
  /** First backoff ceiling; doubles on every retry. @default 100 */
  readonly baseDelayMs?: number;
  /** Largest backoff ceiling. @default 5000 */
  readonly maxDelayMs?: number;
  /** Jitter source in [0, 1). @default Math.random */
  readonly random?: () => number;
  /** Waits (tests pass a fake). @default setTimeout */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Called before each retry (metrics, logs). */
  readonly onRetry?: (info: { what: string; attempt: number; delayMs: number; error: unknown }) => void;
  /**
   * Time (of `clock`) after which no retry starts: a retry whose wait would end past it is not
   * made, and the last error is raised as a BackoffDeadlineError. A caller with a time budget
   * (a Lambda invocation) passes its end, so that sustained throttling cannot hold it past it.
   * @default none
   */
  readonly deadline?: number;
  /** The clock of `deadline`. @default Date.now */
  readonly clock?: () => number;
}

/**
 * Retries stopped at their deadline (BackoffOptions.deadline) with the call still failing
 * transiently. Retryable, as the TransientBackendError it is: a later invocation tries again.
 */
export class BackoffDeadlineError extends TransientBackendError {}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The delay before retry `attempt` (1-based): uniform in [0, min(max, base * 2^(attempt-1))]. */
export function backoffDelay(attempt: number, options: BackoffOptions = {}): number {
  const base = options.baseDelayMs ?? 100;
  const cap = Math.min(options.maxDelayMs ?? 5000, base * 2 ** Math.min(attempt - 1, 30));
  return Math.floor((options.random ?? Math.random)() * (cap + 1));
}

/**
 * Runs `fn`, retrying transient AWS errors with exponential backoff and full jitter. Errors that are not
 * transient are rethrown at once; after `maxRetries` retries the last error is wrapped in a
 * TransientBackendError naming `what`, and when the next wait would pass `options.deadline`, in a
 * BackoffDeadlineError.
 */
export async function withBackoff<T>(
  what: string,
  fn: (attempt: number) => Promise<T>,
  options: BackoffOptions = {},
  isRetryable: (error: unknown) => boolean = isTransientAwsError,
): Promise<T> {
  const maxRetries = options.maxRetries ?? 8;
  const sleep = options.sleep ?? defaultSleep;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (error) {
      if (!isRetryable(error)) throw error;
      if (attempt >= maxRetries) {
        throw new TransientBackendError(
          `${what} still failed after ${attempt + 1} attempts with transient errors (last: ${errorMessage(error)}); the backend is throttling or unavailable: retry later, or raise the stream's capacity`,
          { cause: error },
        );
      }
      const delayMs = backoffDelay(attempt + 1, options);
      if (options.deadline !== undefined && (options.clock ?? Date.now)() + delayMs > options.deadline) {
        throw new BackoffDeadlineError(
          `${what} still failed after ${attempt + 1} attempts with transient errors (last: ${errorMessage(error)}), and the next retry would start after the caller's deadline; a later attempt can try again`,
          { cause: error },
        );
      }
      options.onRetry?.({ what, attempt: attempt + 1, delayMs, error });
      await sleep(delayMs);
    }
  }
}
