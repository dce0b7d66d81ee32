import { MemoryBackend } from '../core/index.ts';
import { describeExactlyOnce, type ExactlyOnceFactory } from './testing/exactly-once.ts';
import { MemoryStream } from './testing/memory-stream.ts';

const memory: ExactlyOnceFactory = async ({ shards }) => {
  let current = new MemoryBackend();
  const stream = new MemoryStream(shards, () => 0);
  return {
    backend: current,
    reopen() {
      // A restart keeps only what the backend serializes.
      current = MemoryBackend.deserialize(current.serialize());
      return current;
    },
    stream: {
      source: stream,
      put: (partitionKey, data, arrivalTime) => stream.put(partitionKey, data, arrivalTime),
      split: (shardId) => stream.split(shardId),
      merge: (a, b) => stream.merge(a, b),
    },
  };
};

describeExactlyOnce('memory', memory);

// With a state cache far smaller than the examples' 100 keys, keys are dropped after commits and
// read again, through every fault point, restart and reshard.
describeExactlyOnce('memory, 8 cached keys per operator', memory, { maxCachedKeys: 8 });
