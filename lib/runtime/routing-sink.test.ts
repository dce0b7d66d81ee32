import { describe, expect, it } from 'vitest';
import { ConfigurationError, type Output, type Sink } from '../core/index.ts';
import { RoutingSink } from './routing-sink.ts';

class Collect implements Sink {
  readonly calls: Output[][] = [];
  async publish(outputs: readonly Output[]): Promise<void> {
    this.calls.push([...outputs]);
  }
}

const out = (sink: string, i: number): Output => ({ id: `j/s/1/${i}`, sink, value: i });

describe('RoutingSink', () => {
  it('sends each sink to its route or the fallback, one call per destination, in order', async () => {
    const a = new Collect();
    const b = new Collect();
    const rest = new Collect();
    const routing = new RoutingSink({ a, b }, rest);
    await routing.publish([out('a', 0), out('b', 1), out('a', 2), out('c', 3), out('d', 4), out('a', 5)]);
    expect(a.calls).toEqual([[out('a', 0), out('a', 2), out('a', 5)]]);
    expect(b.calls).toEqual([[out('b', 1)]]);
    expect(rest.calls).toEqual([[out('c', 3), out('d', 4)]]);
    await routing.publish([]);
    expect(a.calls).toHaveLength(1);
    expect(routing.sinkNames).toEqual(['a', 'b']);
    expect(routing.route('zzz')).toBe(rest);
  });

  it('rejects an unrouted sink before publishing anything', async () => {
    const a = new Collect();
    const routing = new RoutingSink(new Map([['a', a]]));
    const attempt = routing.publish([out('a', 0), out('zzz', 1)]);
    await expect(attempt).rejects.toBeInstanceOf(ConfigurationError);
    await expect(attempt).rejects.toThrow(
      /no destination is configured for outputs to sink "zzz" \(configured: "a"\)/,
    );
    expect(a.calls).toHaveLength(0);
  });

  it('checks routes up front and rejects a route that is not a Sink', () => {
    const routing = new RoutingSink({ a: new Collect() });
    expect(() => routing.assertRoutes(['a', 'b', 'c'])).toThrow(/sink\(s\) "b", "c"/);
    expect(() => new RoutingSink({ a: new Collect() }, new Collect()).assertRoutes(['b'])).not.toThrow();
    expect(() => new RoutingSink({ a: {} as Sink })).toThrow(/route for sink "a" is not a Sink/);
  });

  it('fails when a destination fails, after every destination was tried', async () => {
    const a = new Collect();
    const failing: Sink = {
      publish: async () => {
        throw new Error('boom');
      },
    };
    const routing = new RoutingSink({ a, f: failing });
    await expect(routing.publish([out('f', 0), out('a', 1)])).rejects.toThrow('boom');
    expect(a.calls).toEqual([[out('a', 1)]]);
  });
});
