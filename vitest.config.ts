import { defineConfig } from 'vitest/config';

// Two projects: unit tests (no emulator) and infra tests, whose globalSetup starts the AWS
// emulators once per run, only when an infra test is selected (see infra-tests/README.md).
export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['lib/**/*.test.ts', 'cdk/**/*.test.ts'] },
      },
      {
        extends: true,
        test: {
          name: 'infra',
          include: ['infra-tests/**/*.test.ts'],
          globalSetup: ['infra-tests/env/global-setup.ts'],
        },
      },
    ],
  },
});
