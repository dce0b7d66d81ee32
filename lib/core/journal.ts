/**
 * Undo log for one record. Before a record is processed the journal is emptied; every state
 * or timer change pushes its inverse. If a user function throws, the record's effects are
 * rolled back (so a poison record goes to the dead-letter output and changes nothing).
 *
 * Hot path: entries are kept in one flat array of 4 slots each, reused from record to record
 * (no per-record allocation, no closure for the common kinds of change).
 */

/** Something that can undo a change it made; `a` and `b` are what it passed to `record`. */
export interface Undoable {
  undo(a: unknown, b: unknown): void;
}

const MAP_SET = 0; // the map had the key: set it back to the previous value
const MAP_DELETE = 1; // the map did not have the key: delete it
const ARRAY_SLOT = 2; // array[index] = previous
const UNDOABLE = 3; // target.undo(a, b)
const CLOSURE = 4; // target()

export class Journal {
  /** [target, a, b, kind] per entry. */
  private readonly log: unknown[] = [];
  private size = 0;
  enabled = true;
  /**
   * Set when the current record read a state value that is an object (see readState in
   * state.ts): undoing its writes restores which object a state holds, not the object's contents
   * if the record changed them in place.
   */
  objectRead = false;
  /** Set when the current record wrote an object into state (OperatorRuntime.emit copies then). */
  objectWritten = false;
  /**
   * Set when the current record emitted an object without copying it (no state object read or
   * written before): it may be, or be part of, an object the record writes into state next.
   */
  uncopiedOutputs = false;
  /** Copies the current record's uncopied outputs (set by the task; see noteObjectWrite). */
  copyOutputs: () => void = () => {};

  /**
   * Notes that the current record writes an object into state. Outputs it emitted before, not
   * copied then, are copied now: a later record changing that state object in place would change
   * them too before their commit stores them, so what is published would depend on where commits
   * fall.
   */
  noteObjectWrite(): void {
    if (this.objectWritten) return;
    this.objectWritten = true;
    if (this.uncopiedOutputs) {
      this.uncopiedOutputs = false;
      this.copyOutputs();
    }
  }

  reset(): void {
    this.objectRead = false;
    this.objectWritten = false;
    this.uncopiedOutputs = false;
    const n = this.size;
    if (n === 0) return;
    // Drop references so the journal does not keep old state alive; the array keeps its capacity.
    const log = this.log;
    for (let i = 0; i < n; i++) log[i] = undefined;
    this.size = 0;
  }

  private push(target: unknown, a: unknown, b: unknown, kind: number): void {
    const log = this.log;
    const i = this.size;
    log[i] = target;
    log[i + 1] = a;
    log[i + 2] = b;
    log[i + 3] = kind;
    this.size = i + 4;
  }

  /** Records the current value of `map[key]` before it is changed (hot path: no closure). */
  recordMap(map: Map<unknown, unknown>, key: unknown): void {
    if (!this.enabled) return;
    const prev = map.get(key);
    if (prev !== undefined || map.has(key)) this.push(map, key, prev, MAP_SET);
    else this.push(map, key, undefined, MAP_DELETE);
  }

  /** Records the current value of `array[index]` before it is changed. */
  recordSlot(array: unknown[], index: number): void {
    if (!this.enabled) return;
    this.push(array, index, array[index], ARRAY_SLOT);
  }

  /** Records a change that `target.undo(a, b)` reverts. */
  recordUndo(target: Undoable, a: unknown, b: unknown): void {
    if (!this.enabled) return;
    this.push(target, a, b, UNDOABLE);
  }

  record(undo: () => void): void {
    if (!this.enabled) return;
    this.push(undo, undefined, undefined, CLOSURE);
  }

  rollback(): void {
    const log = this.log;
    for (let i = this.size - 4; i >= 0; i -= 4) {
      const target = log[i];
      const a = log[i + 1];
      const b = log[i + 2];
      switch (log[i + 3] as number) {
        case MAP_SET:
          (target as Map<unknown, unknown>).set(a, b);
          break;
        case MAP_DELETE:
          (target as Map<unknown, unknown>).delete(a);
          break;
        case ARRAY_SLOT:
          (target as unknown[])[a as number] = b;
          break;
        case UNDOABLE:
          (target as Undoable).undo(a, b);
          break;
        default:
          (target as () => void)();
      }
    }
    this.reset();
  }
}
