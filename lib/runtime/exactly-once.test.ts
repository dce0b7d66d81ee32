import { MemoryBackend } from '../core/index.ts';
import { describeExactlyOnce } from './testing/exactly-once.ts';
import { MemoryStream } from './testing/memory-stream.ts';

describeExactlyOnce('memory', async ({ shards }) => {
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
});
