import { describe, expect, it } from 'vitest';
import {
  ConfigurationError,
  DEAD_LETTER_SINK,
  type Output,
  type Sink,
  SinkOutputError,
} from '../core/index.ts';
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

  it('sends the outputs a destination rejects (SinkOutputError) to the dead-letter route, the rest to the destination', async () => {
    // Rejects every output whose value is over 10, all at once and before publishing any, as the AWS sinks do.
    class Limited extends Collect {
      override async publish(outputs: readonly Output[]): Promise<void> {
        const big = outputs.filter((o) => (o.value as number) > 10);
        if (big.length > 0) {
          throw SinkOutputError.combine(
            big.map((o) => new SinkOutputError(`${o.id} is too big`, { outputId: o.id })),
          );
        }
        await super.publish(outputs);
      }
    }
    const a = new Limited();
    const deadLetters = new Collect();
    const routing = new RoutingSink({ a, [DEAD_LETTER_SINK]: deadLetters });
    const outputs = [out('a', 0), { ...out('a', 1), value: 11 }, out('a', 2), { ...out('a', 3), value: 12 }];
    await routing.publish(outputs);
    expect(a.calls).toEqual([[out('a', 0), out('a', 2)]]);
    expect(deadLetters.calls).toEqual([
      [1, 3].map((i) => ({
        id: `j/s/1/${i}`,
        sink: DEAD_LETTER_SINK,
        value: {
          reason: 'sink',
          message: `j/s/1/${i} is too big`,
          shardId: 's',
          sink: 'a',
          value: 10 + (i + 1) / 2,
        },
      })),
    ]);

    // A dead letter its own route rejects, or no dead-letter route: the publish fails.
    const limitedDeadLetters = new RoutingSink({ a, [DEAD_LETTER_SINK]: new Limited() });
    await expect(limitedDeadLetters.publish([{ ...out(DEAD_LETTER_SINK, 0), value: 11 }])).rejects.toThrow(
      SinkOutputError,
    );
    await expect(new RoutingSink({ a }).publish(outputs)).rejects.toThrow(
      /is too big \(and 1 more rejected output\)/,
    );
  });
});
