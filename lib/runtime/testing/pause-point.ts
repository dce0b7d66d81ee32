/** A point where one side of a test waits (`wait`) until the test lets it go on (`release`). */
export interface PausePoint {
  /** Called by the paused side: resolves `reached`, then waits for `release`. */
  wait(): Promise<void>;
  /** Resolves once the paused side called `wait`. */
  readonly reached: Promise<void>;
  release(): void;
}

export function pausePoint(): PausePoint {
  let release!: () => void;
  let reach!: () => void;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const reached = new Promise<void>((resolve) => {
    reach = resolve;
  });
  return {
    reached,
    release,
    wait() {
      reach();
      return released;
    },
  };
}
