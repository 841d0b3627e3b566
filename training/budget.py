"""Training for a time instead of a step count: `--time-budget SECONDS`.

    budget = Budget(tc.time_budget, progress)   # progress: the run's, restored on --resume
    if not budget.room(evals=2 if due else 1):  # a step (and any evaluation due) plus the final one
        ...                                     # stop: evaluate one last time and finish
    t0 = time.perf_counter(); step(); budget.stepped(time.perf_counter() - t0)
    lr = lr_factor(it, tc, budget.fraction())   # decay by the share of training time passed
    progress.budget_used_s = budget.clock()     # just before a checkpoint is written
    budget.evaluated(seconds)                   # what an evaluation (and its checkpoint) cost

"Train for five minutes" is what a learner wants to say, and what speedrun trainers
compare: a fixed step count ends at a different time on every machine. The budget's clock
starts with the process, so interpreter start-up, imports, reading the corpus, every
evaluation with its checkpoint, the final evaluation, summary.json and loss.png are all
paid from it. The run stops stepping when one more step, any evaluation due at it and the
final evaluation (the slowest seen, with a margin) and the end (FINISH_S) would no longer
fit. The learning rate decays by time too: warmup still counts steps (it protects the
first updates, however long they take), then the cosine runs over the fraction of the
training window passed, from the first step to the time the stepping must stop, so it
reaches --min-lr as the budget ends, whatever the machine's speed.

On --resume the budget is the run's, not the process's: each checkpoint records the
budget's clock (`Progress.budget_used_s`), and a resumed process starts its clock there,
so its own start-up is paid again; the time between that checkpoint and the kill is lost
and not charged. `--resume --time-budget N` gives the run N seconds in all.
"""
from __future__ import annotations

import time

from training.checkpoint import Progress
from training.run_files import process_age

EVAL_MARGIN = 1.25       # the final evaluation may be slower than the slowest seen (a better sample, a bigger ckpt write)
# summary.json, loss.png (matplotlib is imported at the start: training/run_files.py) and the
# exit. The interpreter's teardown garbage-collects torch's objects: 0.6-2 s after a tiny run on
# a busy 2-core machine, 0.1-0.5 s once the trainer's main has called gc.freeze() (timed from
# main's return to the process's end, 2 runs each).
FINISH_S = 0.8
STEPS_KEPT = 8           # a step's cost: the slowest of the latest few (the first after an evaluation is slow)


class Budget:
    """The run's clock against its budget (total_s 0: no budget, the clock alone, which
    summary.json reports as run_s); `Progress` carries what a checkpoint must keep."""

    def __init__(self, total_s: float, progress: Progress, began_s: float = 0.0):
        """began_s: the process's age when this run began (0: its start; a test or a bench that
        runs the trainer's main in its own process passes its age then)."""
        self.total_s = total_s
        self.limited = total_s > 0
        self.progress = progress
        self._origin = time.perf_counter() - (process_age() - began_s) - progress.budget_used_s
        self._steps: list[float] = []

    def clock(self) -> float:
        """Seconds of the budget spent: this process since it started, plus earlier processes."""
        return time.perf_counter() - self._origin

    def stepped(self, seconds: float) -> None:
        self._steps = (self._steps + [seconds])[-STEPS_KEPT:]
        if self.progress.budget_start_s < 0:   # the training window opens at the run's first step
            self.progress.budget_start_s = self.clock() - seconds

    @property
    def eval_s(self) -> float:
        """The slowest evaluation of the run (kept in checkpoints: a resumed process may have to
        stop before it evaluates, and its first evaluation is as cold as the run's first)."""
        return self.progress.eval_cost_s

    def evaluated(self, seconds: float) -> None:
        self.progress.eval_cost_s = max(self.progress.eval_cost_s, seconds)

    @property
    def reserve_s(self) -> float:
        """What the end costs: the final evaluation, writing the run's last files, the exit."""
        return self.eval_s * EVAL_MARGIN + FINISH_S

    @property
    def end_s(self) -> float:
        """When the stepping must stop, on the budget's clock."""
        return self.total_s - self.reserve_s

    def room(self, evals: int = 1) -> bool:
        """Is there time for one more step, then `evals` evaluations (one due now and the
        final one: 2; the final one alone: 1) and the end?"""
        if not self.limited:
            return True
        step_s = max(self._steps, default=0.0)
        return self.clock() + step_s + (evals - 1) * self.eval_s * EVAL_MARGIN + self.reserve_s <= self.total_s

    def fraction(self) -> float:
        """The share of the training window passed (0 before the first step, 1 at its end)."""
        start = self.progress.budget_start_s
        if start < 0 or not self.limited:
            return 0.0
        return min(1.0, max(0.0, (self.clock() - start) / max(1e-9, self.end_s - start)))
