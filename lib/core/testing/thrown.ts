/** Test helper: the error a function throws, checked to be of the expected class. */
import { expect } from 'vitest';

/** Runs `fn`, expecting it to throw an instance of `type`; returns that error. */
export function thrownBy<E extends Error>(fn: () => unknown, type: abstract new (...args: never[]) => E): E {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(type);
  return caught as E;
}
