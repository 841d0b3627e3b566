"""The scheduler alone (serving/engine/scheduler.py): requests in an inbox, a slot table, the
plans it returns. No model runs: the slots' lengths move as the loop would move them."""
from __future__ import annotations

import queue

from core.tokens import TextStream
from serving.engine.requests import Request
from serving.engine.runner import Decode, Extend, Prefill
from serving.engine.sampling import SamplingParams
from serving.engine.scheduler import MIN_REUSE, PREFILL_BATCH, Scheduler, SchedulerConfig
from serving.engine.slots import SlotState, SlotTable

TABLE = [bytes([c]) for c in range(256)]


def choices(ids, n=1, **params):
    """A request's n choices, as Engine.submit builds them."""
    p = SamplingParams(**{"max_tokens": 50, "n": n, **params})
    group = [Request(list(ids), p, TextStream(TABLE), index=i) for i in range(n)]
    for r in group:
        r.choices = group
    return group


def scheduler(slots=4, context=32, speculate=0, can_copy=True):
    inbox = queue.Queue()
    return inbox, Scheduler(inbox, SlotTable(slots, context), SchedulerConfig(speculate), can_copy)


def run_prefills(s: Scheduler, plan) -> None:
    """What the loop does after the runner prefilled: the windows are in the caches."""
    for p in plan.prefills:
        s.started([p.slot, *p.copies], [len(p.window)] * (1 + len(p.copies)))
        for t in (p.slot, *p.copies):
            s.fed(t, 7)


def test_a_requests_choices_join_together_with_one_prefill_and_copies():
    inbox, s = scheduler()
    a, b = choices([1, 2, 3]), choices([4, 5], n=3, seed=1)
    inbox.put(a)
    inbox.put(b)
    plan = s.schedule()
    assert plan.joined == a + b and [r.slot for r in a + b] == [0, 1, 2, 3]
    assert plan.prefills == [Prefill(0, [1, 2, 3]), Prefill(1, [4, 5], copies=(2, 3))]
    assert s.table.state == [SlotState.PREFILLING] * 4
    run_prefills(s, plan)
    assert s.table.generating() == [0, 1, 2, 3] and s.table.lengths.tolist() == [3, 2, 2, 2]


def test_without_copies_each_choice_is_prefilled():
    inbox, s = scheduler(can_copy=False)
    inbox.put(choices([4, 5], n=2))
    assert [p.slot for p in s.schedule().prefills] == [0, 1]


def test_a_group_that_does_not_fit_waits_and_later_ones_wait_behind_it():
    inbox, s = scheduler(slots=3)
    first, big, small = choices([1]), choices([2], n=3), choices([3])
    for g in (first, big, small):
        inbox.put(g)
    plan = s.schedule()
    assert plan.joined == first and s.admitting == [big] and inbox.qsize() == 1   # small does not overtake
    run_prefills(s, plan)
    assert not s.schedule().joined
    s.release(first[0])
    assert s.schedule().joined == big and inbox.qsize() == 1


def test_newcomers_per_step_are_bounded():
    inbox, s = scheduler(slots=32)
    for i in range(PREFILL_BATCH + 3):
        inbox.put(choices([i + 1]))
    assert len(s.schedule().joined) == PREFILL_BATCH
    assert len(s.schedule().joined) == 3


def test_cancelled_requests_leave_waiting_or_running():
    inbox, s = scheduler()
    running, waiting = choices([1, 2]), choices([3])
    inbox.put(running)
    run_prefills(s, s.schedule())
    waiting[0].cancel()
    running[0].cancel()
    inbox.put(waiting)
    plan = s.schedule()
    assert plan.left == running + waiting and not plan.joined and not plan.prefills
    assert s.table.running == 0 and waiting[0].slot == -1


def test_decode_covers_rows_up_to_the_highest_generating_slot():
    inbox, s = scheduler()
    reqs = [choices([i + 1, i + 2]) for i in range(3)]
    for g in reqs:
        inbox.put(g)
    run_prefills(s, s.schedule())
    s.release(reqs[1][0])
    step = s.decode_step()
    assert isinstance(step, Decode) and step.slots == [0, 2] and len(step.tokens) == 3
    assert step.lengths.tolist() == [2, 2, 2]   # a free row is fed at the length it keeps...
    s.decoded(step)
    assert s.table.lengths.tolist()[:3] == [3, 2, 3]   # ...and only owned rows advance


def test_a_full_row_slides_into_its_own_slot_before_the_next_decode():
    inbox, s = scheduler(context=8)
    g = choices(list(range(1, 8)))
    inbox.put(g)
    run_prefills(s, s.schedule())                 # 7 tokens in an 8-token cache
    r = g[0]
    step = s.decode_step()
    s.decoded(step)                               # 8: full
    r.ids.append(9)                               # what check_stop records
    s.fed(0, 9)
    assert s.table.state[0] is SlotState.PREFILLING and s.decode_step() is None
    plan = s.schedule()
    assert plan.prefills == [Prefill(0, r.ids[-6:])] and r.window_start == len(r.ids) - 6   # window_keep(8)


def test_a_prompt_sharing_a_free_slots_cache_takes_that_slot():
    inbox, s = scheduler()
    prompt = list(range(1, 21))
    other, first = choices([99, 98]), choices(prompt)
    inbox.put(other)
    inbox.put(first)
    run_prefills(s, s.schedule())
    first[0].ids.append(7)
    s.release(first[0])                           # slot 1 keeps prompt + [7]
    assert s.table.cached[1].tolist() == prompt
    again = choices(prompt[:15] + [50, 51])
    echo = choices(prompt, prompt_logprobs=1)     # wants every position's logits: no reuse
    inbox.put(again)
    inbox.put(echo)
    plan = s.schedule()
    assert again[0].slot == 1 and plan.prefills[0] == Prefill(1, again[0].ids, reused=15)
    assert echo[0].slot == 2 and plan.prefills[1] == Prefill(2, prompt, echo=1)
    assert 15 >= MIN_REUSE


def test_a_lone_row_with_a_repeat_verifies_a_draft():
    inbox, s = scheduler(speculate=4)
    g = choices([5, 6, 7, 8, 5, 6])               # "5 6" was followed by "7 8" before
    inbox.put(g)
    plan = s.schedule()
    s.started([0], [6])
    s.fed(0, 7)
    g[0].ids.append(7)
    step = s.decode_step()
    assert step == Extend(0, 6, [7, 8, 5, 6, 7], [8, 5, 6, 7])   # what followed "5 6 7" last time
    assert plan.joined == g


def test_close_hands_back_every_request_and_frees_the_slots():
    inbox, s = scheduler(slots=1)
    running, waiting, queued = choices([1]), choices([2]), choices([3])
    inbox.put(running)
    inbox.put(waiting)
    run_prefills(s, s.schedule())
    inbox.put(queued)
    assert s.close() == waiting + queued + running
    assert s.table.running == 0 and not s.admitting and inbox.empty()
