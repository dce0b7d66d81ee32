import { MemoryBackend } from './memory-backend.ts';
import { describeBackendContract } from './testing/backend-contract.ts';

describeBackendContract('memory', async () => {
  let current = new MemoryBackend();
  return {
    store: current,
    async reopen() {
      // A restart keeps only what the backend serializes.
      current = MemoryBackend.deserialize(current.serialize());
      return current;
    },
    async close() {},
  };
});
