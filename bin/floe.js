#!/usr/bin/env node
// The floe CLI. Pipelines are plain TypeScript modules, so the CLI runs through tsx's loaders
// (ESM, and CommonJS for modules outside a "type": "module" package).
import { register as registerCjs } from 'tsx/cjs/api';
import { register } from 'tsx/esm/api';

register();
registerCjs();
// The pinned AWS SDK supports Node 20; its notice about future SDK versions needing Node 22
// would break the CLI's one-line error output. (See README, Known limits.)
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
// `floe simulate ... | head -1` closes stdout early: stop quietly instead of crashing.
process.stdout.on('error', (error) => {
  if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  console.error(`floe: cannot write to stdout: ${error.message}`);
  process.exit(1);
});
const { main } = await import('../lib/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
