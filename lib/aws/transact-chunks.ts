/**
 * Writing many independent, individually conditioned items with TransactWriteItems (the delta
 * apply of DynamoBackend with `deltaApply: 'transactions'`):
 *
 * - `planChunks` splits the items into chunks of at most `maxActions` items and `maxBytes` bytes,
 *   balanced, and at least `minChunks` of them when there are that many items (so that a crash
 *   "halfway through" has a chunk boundary to fall on);
 * - `writeChunk` sends one chunk as one transaction. A transaction is all-or-nothing: when it is
 *   cancelled because some of its items failed their condition (CancellationReasons code
 *   `ConditionalCheckFailed`), it is sent again without exactly those items; those items are
 *   reported as skipped (for a version condition: the stored item is newer). Cancellations for
 *   transient reasons (TransactionConflict, throttling) are retried with backoff a few times and
 *   then raised; any other cancellation reason, or a cancellation without reasons, is raised.
 *
 * Items are never merged or reordered inside a chunk, so the i-th cancellation reason is the
 * i-th item of the request that was sent.
 */
import { TransactionCanceledException } from '@aws-sdk/client-dynamodb';

/** Cancellation reason codes that are worth retrying the same transaction for. */
export const TRANSIENT_CANCELLATION_CODES: ReadonlySet<string> = new Set([
  'TransactionConflict',
  'ThrottlingError',
  'ProvisionedThroughputExceeded',
  'RequestLimitExceeded',
]);

export interface ChunkLimits {
  /** Items per chunk. */
  readonly maxActions: number;
  /** Sum of `sizeOf` per chunk (an item larger than this gets a chunk of its own). */
  readonly maxBytes: number;
  /** Split into at least this many chunks when there are at least that many items. @default 1 */
  readonly minChunks?: number;
}

/** Splits `items` (in order) into balanced chunks within the limits. */
export function planChunks<T>(items: readonly T[], sizeOf: (item: T) => number, limits: ChunkLimits): T[][] {
  if (items.length === 0) return [];
  const byCount = Math.ceil(items.length / limits.maxActions);
  const count = Math.min(items.length, Math.max(byCount, limits.minChunks ?? 1));
  const target = Math.ceil(items.length / count);
  const chunks: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const item of items) {
    const size = sizeOf(item);
    if (current.length > 0 && (current.length >= target || bytes + size > limits.maxBytes)) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += size;
  }
  chunks.push(current);
  return chunks;
}

export interface ChunkOutcome<T = unknown> {
  /** Transactions sent (including cancelled ones). */
  readonly requests: number;
  /** Items carried by the transactions sent. */
  readonly itemsSent: number;
  /** Items left out because their condition failed. */
  readonly skipped: number;
  /** Those items. */
  readonly skippedItems: readonly T[];
}

export interface WriteChunkOptions {
  /** Retries of a transaction cancelled for transient reasons only. @default 5 */
  readonly maxTransientRetries?: number;
  /** First backoff ceiling (ms, full jitter, doubling). @default 25 */
  readonly baseDelayMs?: number;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly random?: () => number;
}

/**
 * The reasons of a cancelled transaction of `size` items: the indices whose condition failed and
 * whether any other item hit a transient problem. Undefined when `error` is not a cancellation
 * this can act on (not a TransactionCanceledException, reasons missing or of another length, or a
 * reason that is neither None, ConditionalCheckFailed nor transient).
 */
export function cancellationOf(
  error: unknown,
  size: number,
): { readonly conditionFailed: ReadonlySet<number>; readonly transient: boolean } | undefined {
  const isCancellation =
    error instanceof TransactionCanceledException ||
    (error as { name?: string } | undefined)?.name === 'TransactionCanceledException';
  if (!isCancellation) return undefined;
  const reasons = (error as TransactionCanceledException).CancellationReasons;
  if (reasons === undefined || reasons.length !== size) return undefined;
  const conditionFailed = new Set<number>();
  let transient = false;
  for (const [i, reason] of reasons.entries()) {
    const code = reason.Code ?? 'None';
    if (code === 'None') continue;
    if (code === 'ConditionalCheckFailed') conditionFailed.add(i);
    else if (TRANSIENT_CANCELLATION_CODES.has(code)) transient = true;
    else return undefined;
  }
  if (conditionFailed.size === 0 && !transient) return undefined;
  return { conditionFailed, transient };
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Sends `items` as one transaction (`send` builds and sends the TransactWriteItems of the items
 * it is given), leaving out the items whose condition fails. Errors that are not a cancellation
 * it can act on are rethrown unchanged; after `maxTransientRetries` transient cancellations the
 * last one is rethrown.
 */
export async function writeChunk<T>(
  items: readonly T[],
  send: (items: readonly T[]) => Promise<unknown>,
  options: WriteChunkOptions = {},
): Promise<ChunkOutcome<T>> {
  const maxRetries = options.maxTransientRetries ?? 5;
  const sleep = options.sleep ?? defaultSleep;
  const random = options.random ?? Math.random;
  let pending = items;
  let requests = 0;
  let itemsSent = 0;
  const skippedItems: T[] = [];
  let transientRetries = 0;
  while (pending.length > 0) {
    requests++;
    itemsSent += pending.length;
    try {
      await send(pending);
      break;
    } catch (error) {
      const cancellation = cancellationOf(error, pending.length);
      if (cancellation === undefined) throw error;
      if (cancellation.conditionFailed.size > 0) {
        skippedItems.push(...pending.filter((_, i) => cancellation.conditionFailed.has(i)));
        pending = pending.filter((_, i) => !cancellation.conditionFailed.has(i));
      }
      if (cancellation.transient) {
        if (++transientRetries > maxRetries) throw error;
        const cap = (options.baseDelayMs ?? 25) * 2 ** (transientRetries - 1);
        await sleep(Math.floor(random() * (cap + 1)));
      }
    }
  }
  return { requests, itemsSent, skipped: skippedItems.length, skippedItems };
}
