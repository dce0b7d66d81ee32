import { describe, expect, it } from 'vitest';
import { ConfigurationError } from '../core/index.ts';
import { awsJobConfigFromEnv } from './job.ts';

const base = {
  FLOE_JOB: 'pv',
  FLOE_STREAM: 'clicks',
  FLOE_STATE_TABLE: 'state',
  FLOE_CONTROL_TABLE: 'control',
  FLOE_BUCKET: 'bucket',
};

describe('awsJobConfigFromEnv: FLOE_DELTA_APPLY', () => {
  it('is absent by default (the backend default applies)', () => {
    expect(awsJobConfigFromEnv(base).deltaApply).toBeUndefined();
    expect(awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: '' }).deltaApply).toBeUndefined();
  });

  it('takes items or transactions', () => {
    expect(awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'transactions' }).deltaApply).toBe(
      'transactions',
    );
    expect(awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'items' }).deltaApply).toBe('items');
  });

  it('rejects anything else, naming the choices', () => {
    expect(() => awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'batch' })).toThrow(ConfigurationError);
    expect(() => awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'batch' })).toThrow(/items, transactions/);
  });
});
