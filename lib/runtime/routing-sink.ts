/** Routing of outputs to the Sink bound to each named sink of a pipeline (any runtime). */
import {
  ConfigurationError,
  DEAD_LETTER_SINK,
  type DeadLetter,
  describeValue,
  type Output,
  type PublishContext,
  type Sink,
  SinkOutputError,
} from '../core/index.ts';

/**
 * Sends each named sink's outputs (in their order) to the Sink routed for that name, or to
 * `fallback`. An output for a sink with no route and no fallback is rejected with a
 * ConfigurationError before anything is published. Each destination gets one call per publish,
 * and destinations are published to concurrently.
 *
 * Outputs a destination rejects as unpublishable (SinkOutputError: over its size limit, no valid
 * key) are committed already and would fail every later publish of the shard: they go to the
 * `floe.dead-letter` route instead, with reason `sink` and the same id (so a republish diverts
 * them again, idempotently), and the destination gets the rest. A dead letter that its own route
 * rejects fails the publish.
 */
export class RoutingSink implements Sink {
  private readonly routes: ReadonlyMap<string, Sink>;
  private readonly rejectedListeners: ((deadLetters: readonly Output[]) => void)[] = [];

  constructor(
    routes: Readonly<Record<string, Sink>> | ReadonlyMap<string, Sink>,
    readonly fallback?: Sink,
  ) {
    this.routes = routes instanceof Map ? new Map(routes) : new Map(Object.entries(routes));
    for (const [name, sink] of this.routes) {
      if (sink === undefined || sink === null || typeof (sink as Sink).publish !== 'function') {
        throw new ConfigurationError(
          `the route for sink "${name}" is not a Sink; received ${describeValue(sink)}`,
        );
      }
    }
  }

  /** The routed sink names. */
  get sinkNames(): string[] {
    return [...this.routes.keys()];
  }

  /** Calls `listener` with the dead letters of each publish that set rejected outputs aside (metrics, logs). */
  onRejected(listener: (deadLetters: readonly Output[]) => void): void {
    this.rejectedListeners.push(listener);
  }

  route(sink: string): Sink | undefined {
    return this.routes.get(sink) ?? this.fallback;
  }

  /**
   * Throws a ConfigurationError naming the sinks a pipeline writes (e.g. `plan.sinks`) that have
   * no route, unless there is a fallback. Call it at start-up to fail before the first output.
   */
  assertRoutes(sinkNames: Iterable<string>): void {
    if (this.fallback !== undefined) return;
    const missing = [...sinkNames].filter((name) => !this.routes.has(name));
    if (missing.length > 0) {
      throw new ConfigurationError(
        `no destination is configured for sink(s) ${missing.map((n) => `"${n}"`).join(', ')} (configured: ${this.describeRoutes()}); bind each sink the pipeline writes, or give a fallback sink`,
      );
    }
  }

  async publish(outputs: readonly Output[], context?: PublishContext): Promise<void> {
    if (outputs.length === 0) return;
    // One group per destination (a fallback gets one call for all the names it serves).
    const groups = new Map<Sink, Output[]>();
    for (const o of outputs) {
      const target = this.route(o.sink);
      if (target === undefined) {
        throw new ConfigurationError(
          `no destination is configured for outputs to sink "${o.sink}" (configured: ${this.describeRoutes()}); add a route for it or a fallback sink`,
        );
      }
      let group = groups.get(target);
      if (group === undefined) {
        group = [];
        groups.set(target, group);
      }
      group.push(o);
    }
    const results = await Promise.allSettled(
      [...groups].map(([sink, group]) => publishOrReject(sink, group, context)),
    );
    const rejected: Output[] = [];
    for (const r of results) {
      if (r.status === 'rejected') throw r.reason;
      rejected.push(...r.value.deadLetters);
    }
    if (rejected.length === 0) return;
    const deadLetters = this.route(DEAD_LETTER_SINK);
    if (deadLetters === undefined) throw firstError(results);
    // With what the dead-letter route got in this publish: a sink that writes each object whole
    // (S3 without merge) would otherwise replace the commit's other dead letters.
    const index = [...groups.keys()].indexOf(deadLetters);
    const published = index < 0 ? [] : (results[index] as PromiseFulfilledResult<Published>).value.published;
    await deadLetters.publish([...published, ...rejected], context);
    for (const listener of this.rejectedListeners) listener(rejected);
  }

  private describeRoutes(): string {
    return [...this.routes.keys()].map((k) => `"${k}"`).join(', ') || 'none';
  }
}

/** What a destination took, and the dead letters of the outputs it rejected. */
interface Published {
  readonly published: readonly Output[];
  readonly deadLetters: readonly Output[];
  readonly error?: SinkOutputError;
}

/**
 * Publishes `outputs` to `sink`, but for those it rejects (see RoutingSink): their dead letters.
 * A sink rejects all it can before it sends anything; one that finds more on sending (DynamoDB)
 * is tried again without them, until it takes the rest or names nothing more to set aside.
 */
async function publishOrReject(
  sink: Sink,
  outputs: readonly Output[],
  context: PublishContext | undefined,
): Promise<Published> {
  let rest = outputs;
  const rejected = new Map<string, string>();
  let last: SinkOutputError | undefined;
  while (rest.length > 0) {
    try {
      await sink.publish(rest, context);
      break;
    } catch (error) {
      if (!(error instanceof SinkOutputError)) throw error;
      const setAside = rest.filter((o) => error.rejected.has(o.id));
      // Nothing to set aside (the error names no output of ours), or a dead letter: fail.
      if (setAside.length === 0 || setAside.some((o) => o.sink === DEAD_LETTER_SINK)) throw error;
      for (const o of setAside) rejected.set(o.id, error.rejected.get(o.id) ?? error.message);
      rest = rest.filter((o) => !error.rejected.has(o.id));
      last = error;
    }
  }
  const deadLetters = outputs
    .filter((o) => rejected.has(o.id))
    .map((o) => sinkDeadLetter(o, rejected.get(o.id)!));
  return { published: rest, deadLetters, ...(last === undefined ? {} : { error: last }) };
}

function firstError(results: PromiseSettledResult<Published>[]): SinkOutputError | undefined {
  for (const r of results) if (r.status === 'fulfilled' && r.value.error !== undefined) return r.value.error;
  return undefined;
}

/** A rejected output as a dead letter: same id, reason `sink`, the sink it was for and its value. */
function sinkDeadLetter(output: Output, message: string): Output {
  const parts = output.id.split('/');
  const value: DeadLetter = {
    reason: 'sink',
    message,
    shardId: parts[parts.length - 3] ?? '',
    sink: output.sink,
    value: output.value,
  };
  return { id: output.id, sink: DEAD_LETTER_SINK, value };
}
