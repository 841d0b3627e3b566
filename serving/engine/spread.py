"""How a decode step of n rows is spread over the cores: measured at start-up on this machine
and this model, not assumed.

    plans = Plans(cores=2, spread="auto")
    plans.calibrate(time_step, max_rows=64)   # time_step(plan, rows) -> seconds of one step
    plans.get(rows)                           # Plan(slices=2, threads=1): 2 slices, 1 thread each
    log.info(plans.summary)                   # one line: what was chosen, and how it measured

A plan cuts the rows into `slices` runs of adjacent rows run at once, each on a session with
`threads` intra-op threads: `Plan(1, cores)` splits every matmul across the cores (what a
lone row needs once its matmuls are big enough to pay ONNX Runtime's fork and join around
each operator), `Plan(cores, 1)` gives each core its own rows with no join inside a step
(what a crowd of rows needs), and on 4+ cores plans in between do both. Which wins depends
on the model's size, the row count and the machine: on the 3.7M model one thread beat two
below 4 rows (the old rule, `SLICE_ROWS`), while a larger model's lone row wants both cores
as llama.cpp uses them (issue 25). So `calibrate` times each candidate for 1, 2, 4, ... rows
(interleaved, median), and a row count between two calibrated ones takes the lower one's
plan. `spread` overrides: "threads" always splits matmuls (`Plan(1, cores)`), "slices"
always cuts rows (`Plan(min(cores, rows), 1)`).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

SPREADS = ("auto", "threads", "slices")
SPINS = ("call", "always", "off")   # how a pooled session's threads wait (runtime.session_options)
REPEATS = 5              # timed steps per candidate and row count at least (after one untimed),
MIN_TIMED_S = 0.02       # and more until each candidate has been timed this long (a small model's
MAX_REPEATS = 200        # 0.2 ms step: ~100 steps), so one preemption cannot pick the plan for the
                         # server's lifetime; start-up grows by ~0.3 s at most
STOP_AFTER = 2           # row counts in a row that slicing won by >10%: larger counts slice too
# A plan whose threads meet at every operator (threads > 1) must beat one whose threads meet
# once a step (slices; or, for a lone row, one thread that leaves the other cores free) by
# more than this: the server's event loop (each token's HTTP/gRPC write) and its clients
# need CPU every step, and a thread they preempt stalls every operator's join of the first
# but only its own slice of the second. Calibration runs without them, so it cannot see
# that. What a step loses to them lies between what two threads saved where they lost and
# where they won (bench/spin.py: a 3.7M lone row's two threads saved 0.07-0.10 ms of ~0.3 in
# isolation and served 0.93x; at 11.5M they saved 0.35 ms and served 1.2x), the same at every
# model size: it is the front end's work, not the model's. 0.15 ms keeps the 3.7M row, whose
# saving sits at 0.1, clear of a coin toss between starts.
FRONT_END_S = 1.5e-4


class Plan(NamedTuple):
    slices: int
    threads: int

    def __str__(self) -> str:
        return f"{self.slices} slice{'s' if self.slices > 1 else ''} x {self.threads} thread{'s' if self.threads > 1 else ''}"


def candidates(cores: int, rows: int) -> list[Plan]:
    """Every way to use the cores on `rows` rows: s slices of cores // s threads (s a power of
    two up to the cores, or the cores), plus one thread alone while rows are fewer than cores."""
    ways = sorted({s for s in (*(2 ** i for i in range(cores.bit_length())), cores) if s <= min(cores, rows)})
    plans = [Plan(s, max(1, cores // s)) for s in ways]
    if rows < cores and Plan(1, 1) not in plans:
        plans.append(Plan(1, 1))
    return plans


class Plans:
    def __init__(self, cores: int, spread: str = "auto"):
        if spread not in SPREADS:
            raise ValueError(f"spread must be one of {', '.join(SPREADS)}, got {spread!r}")
        self.cores, self.spread = cores, spread
        self.table: dict[int, Plan] = {}        # calibrated row counts -> the plan that won
        self.summary = f"spread over {cores} core(s): {spread}"

    def get(self, rows: int) -> Plan:
        if self.cores == 1:
            return Plan(1, 1)
        if self.spread == "threads":
            return Plan(1, self.cores)
        if self.spread == "slices" or not self.table:   # not calibrated: the old rule
            return Plan(min(self.cores, rows), 1) if rows >= 4 or self.spread == "slices" else Plan(1, 1)
        below = [n for n in self.table if n <= rows]
        return self.table[max(below)] if below else self.table[min(self.table)]

    def calibrate(self, time_step: Callable[[Plan, int], float], max_rows: int) -> None:
        """Time every candidate at 1, 2, 4, ... rows (up to max_rows, which is included), keep
        the fastest per row count, and write `summary`."""
        if self.cores == 1 or self.spread != "auto":
            return
        t0, sliced_wins, notes = time.perf_counter(), 0, []
        counts = sorted({*(2 ** i for i in range(max_rows.bit_length()) if 2 ** i <= max_rows), max_rows})
        for rows in counts:
            if sliced_wins >= STOP_AFTER:
                self.table[rows] = Plan(min(self.cores, rows), 1)
                continue
            plans = candidates(self.cores, rows)
            times: dict[Plan, list[float]] = {p: [] for p in plans}
            for p in plans:
                time_step(p, rows)                       # bindings, first-touch pages
            while len(times[plans[0]]) < MAX_REPEATS and (
                    len(times[plans[0]]) < REPEATS or min(sum(t) for t in times.values()) < MIN_TIMED_S):
                for p in plans:
                    times[p].append(time_step(p, rows))
            med = {p: statistics.median(t) for p, t in times.items()}
            best = min(med, key=lambda p: med[p] + (FRONT_END_S if p.threads > 1 else 0.0))
            self.table[rows] = best
            others = ", ".join(f"{p} {1e3 * med[p]:.2f}" for p in plans if p != best)
            notes.append(f"{rows}: {best} {1e3 * med[best]:.2f} ms ({others})")
            full = Plan(min(self.cores, rows), 1)
            runner_up = min((med[p] for p in plans if p != full), default=float("inf"))
            sliced_wins = sliced_wins + 1 if best == full and med[full] < 0.9 * runner_up else 0
        rest = [n for n in counts if n > int(notes[-1].split(":")[0])]
        self.summary = (f"spread over {self.cores} cores, calibrated in {time.perf_counter() - t0:.1f} s "
                        f"(rows: plan, median step): {'; '.join(notes)}"
                        + (f"; {rest[0]}+: slices (untimed)" if rest else ""))
