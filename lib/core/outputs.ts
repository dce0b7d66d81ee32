/** Helpers for sink adapters publishing committed outputs. */
import { describeValue, StateSerializationError } from './errors.ts';
import type { Output } from './ports.ts';

/** An output's value as JSON text, or undefined for an undefined value; a clear error if it is not JSON. */
export function outputValueJson(output: Output): string | undefined {
  if (output.value === undefined) return undefined;
  let text: string | undefined;
  try {
    text = JSON.stringify(output.value);
  } catch (error) {
    throw new StateSerializationError(
      `output ${output.id} to sink "${output.sink}" is not JSON-serializable (${String(error)})`,
      { cause: error },
    );
  }
  if (text === undefined) {
    throw new StateSerializationError(
      `output ${output.id} to sink "${output.sink}" is not JSON-serializable (received ${describeValue(output.value)})`,
    );
  }
  return text;
}
