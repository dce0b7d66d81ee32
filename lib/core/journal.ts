/**
 * Undo log for one record. Before a record is processed the journal is emptied; every state
 * or timer change pushes its inverse. If a user function throws, the record's effects are
 * rolled back (so a poison record goes to the dead-letter output and changes nothing).
 */
export class Journal {
  private readonly undo: Array<() => void> = [];
  private readonly mapTargets: Array<Map<unknown, unknown>> = [];
  private readonly mapKeys: unknown[] = [];
  private readonly mapPrev: unknown[] = [];
  private readonly mapHad: boolean[] = [];
  /** Order of undo entries: >= 0 indexes `undo`, < 0 is -(map entry index) - 1. */
  private readonly order: number[] = [];
  enabled = true;

  reset(): void {
    if (this.order.length === 0) return;
    this.undo.length = 0;
    this.mapTargets.length = 0;
    this.mapKeys.length = 0;
    this.mapPrev.length = 0;
    this.mapHad.length = 0;
    this.order.length = 0;
  }

  /** Records the current value of `map[key]` before it is changed (hot path: no closure). */
  recordMap(map: Map<unknown, unknown>, key: unknown): void {
    if (!this.enabled) return;
    const had = map.has(key);
    this.mapTargets.push(map);
    this.mapKeys.push(key);
    this.mapPrev.push(had ? map.get(key) : undefined);
    this.mapHad.push(had);
    this.order.push(-this.mapTargets.length);
  }

  record(undo: () => void): void {
    if (!this.enabled) return;
    this.undo.push(undo);
    this.order.push(this.undo.length - 1);
  }

  rollback(): void {
    for (let i = this.order.length - 1; i >= 0; i--) {
      const o = this.order[i]!;
      if (o >= 0) {
        this.undo[o]!();
      } else {
        const j = -o - 1;
        const map = this.mapTargets[j]!;
        if (this.mapHad[j]) map.set(this.mapKeys[j], this.mapPrev[j]);
        else map.delete(this.mapKeys[j]);
      }
    }
    this.reset();
  }
}
