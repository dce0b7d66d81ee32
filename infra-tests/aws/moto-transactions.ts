/**
 * A test-side workaround for moto's TransactWriteItems, which is not safe under concurrent
 * requests (moto_server serves requests on threads; moto 5.2.1, dynamodb/models/__init__.py
 * `transact_write_items`):
 *
 * 1. Before applying a transaction it deep-copies every table the transaction touches (once per
 *    action). A concurrent write to one of those tables makes the copy fail with
 *    `RuntimeError: dictionary changed size during iteration`, answered as an HTML HTTP 500 (the
 *    SDK retries it; nothing was applied).
 * 2. A transaction that fails a condition "rolls back" by putting those deep copies back in place
 *    of the tables, which silently undoes every write other requests made to those tables in the
 *    meantime: observed here as a lost lease acquisition (the next commit under the new fence was
 *    rejected) and lost commits (a shard's commit N vanished after its outputs were published;
 *    the next commit failed, the shard resumed from N - 1 and made a different commit N).
 *
 * DynamoDB itself isolates transactions. To test floe rather than moto's threading, this
 * serializes requests per client with a readers-writer lock: a TransactWriteItems attempt runs
 * alone, every other request may run concurrently with the others. The lock sits inside the
 * SDK's retry loop (one attempt holds it, backoff sleeps do not).
 */
interface MiddlewareStackLike {
  add(
    middleware: (
      next: (args: unknown) => Promise<unknown>,
      context: { commandName?: string },
    ) => (args: unknown) => Promise<unknown>,
    options: { step: 'finalizeRequest'; name: string; priority: 'low' },
  ): void;
}

class ReadersWriterLock {
  private readers = 0;
  private writer = false;
  private readonly waiting: { exclusive: boolean; go: () => void }[] = [];

  async acquire(exclusive: boolean): Promise<() => void> {
    if (this.waiting.length === 0 && this.free(exclusive)) this.take(exclusive);
    else await new Promise<void>((go) => this.waiting.push({ exclusive, go }));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (exclusive) this.writer = false;
      else this.readers--;
      this.drain();
    };
  }

  private free(exclusive: boolean): boolean {
    return exclusive ? !this.writer && this.readers === 0 : !this.writer;
  }

  private take(exclusive: boolean): void {
    if (exclusive) this.writer = true;
    else this.readers++;
  }

  private drain(): void {
    for (
      let next = this.waiting[0];
      next !== undefined && this.free(next.exclusive);
      next = this.waiting[0]
    ) {
      this.waiting.shift();
      this.take(next.exclusive);
      next.go();
    }
  }
}

let installed = 0;

/** Makes the client's TransactWriteItems attempts exclusive (see the file comment). */
export function isolateMotoTransactions(client: { middlewareStack: unknown }): void {
  const lock = new ReadersWriterLock();
  (client.middlewareStack as MiddlewareStackLike).add(
    (next, context) => async (args) => {
      const release = await lock.acquire(context.commandName === 'TransactWriteItemsCommand');
      try {
        return await next(args);
      } finally {
        release();
      }
    },
    { step: 'finalizeRequest', name: `floeIsolateMotoTransactions${++installed}`, priority: 'low' },
  );
}
