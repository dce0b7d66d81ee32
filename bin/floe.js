#!/usr/bin/env node
// The floe CLI. Pipelines are plain TypeScript modules, so the CLI runs through tsx's loader.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../lib/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
