/** Routing of outputs to the Sink bound to each named sink of a pipeline (any runtime). */
import { ConfigurationError, describeValue, type Output, type Sink } from '../core/index.ts';

/**
 * Sends each named sink's outputs (in their order) to the Sink routed for that name, or to
 * `fallback`. An output for a sink with no route and no fallback is rejected with a
 * ConfigurationError before anything is published. Each destination gets one call per publish,
 * and destinations are published to concurrently.
 */
export class RoutingSink implements Sink {
  private readonly routes: ReadonlyMap<string, Sink>;

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

  async publish(outputs: readonly Output[]): Promise<void> {
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
    const results = await Promise.allSettled([...groups].map(([sink, group]) => sink.publish(group)));
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  private describeRoutes(): string {
    return [...this.routes.keys()].map((k) => `"${k}"`).join(', ') || 'none';
  }
}
