"""Pipeline schedules (hpclm.parallel.schedule), without MPI: every op once, forwards before their
backwards, dependencies across stages respected (the simulator finishes), the bubble of GPipe and
1F1B equals (p - 1) / (m + p - 1), in-flight activations (1F1B <= p - s on stage s, GPipe m),
interleaving over v chunks shrinks the bubble to (p - 1) / (v m + p - 1) and keeps Megatron's
warm-up + 1 micro-batch chunks alive, and a golden diagram."""
import pytest

from hpclm.errors import UserError
from hpclm.parallel.schedule import (Op, bubble_fraction, diagram, gpipe, interleaved, one_f_one_b,
                                     peak_in_flight, schedule, simulate)

CASES = [(p, m) for p in (1, 2, 3, 4) for m in (1, 2, 4, 8, 16)]


def check_complete(ops, m, v=1):
    for stage in ops:
        assert sorted(stage) == sorted([Op(k, j, c) for k in "FB" for j in range(m) for c in range(v)])
        seen = set()
        for op in stage:
            if op.kind == "B":
                assert ("F", op.micro, op.chunk) in seen, f"{op} before its forward"
            seen.add((op.kind, op.micro, op.chunk))


@pytest.mark.parametrize("p, m", CASES)
@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_gpipe_and_1f1b(name, p, m):
    ops = schedule(name, p, m)
    check_complete(ops, m)
    slots = simulate(ops, forward=1.0, backward=2.0)
    assert len(slots) == 2 * p * m
    assert max(x.end for x in slots) == pytest.approx((m + p - 1) * 3.0)
    assert bubble_fraction(slots) == pytest.approx((p - 1) / (m + p - 1))
    for s, stage in enumerate(ops):
        assert peak_in_flight(stage) == (m if name == "gpipe" else min(p - s, m))


@pytest.mark.parametrize("p, m, v", [(2, 2, 2), (2, 4, 2), (4, 4, 2), (4, 8, 2), (4, 8, 3), (3, 6, 2)])
def test_interleaved(p, m, v):
    ops = interleaved(p, m, v)
    check_complete(ops, m, v)
    slots = simulate(ops, forward=1.0 / v, backward=2.0 / v)        # a chunk is 1/v of a stage's layers
    flat = simulate(one_f_one_b(p, m), forward=1.0, backward=2.0)
    assert bubble_fraction(slots) < bubble_fraction(flat) or p == 1
    assert max(x.end for x in slots) == pytest.approx(m * 3.0 + (p - 1) * 3.0 / v)
    assert bubble_fraction(slots) == pytest.approx((p - 1) / (v * m + p - 1))       # Narayanan et al. §2.2
    for s, stage in enumerate(ops):          # live micro-batch chunks: Megatron's warm-up forwards + 1
        assert peak_in_flight(stage) == min(v * m, 2 * (p - s - 1) + (v - 1) * p + 1)
    assert peak_in_flight(ops[0]) > peak_in_flight(one_f_one_b(p, m)[0])     # of chunks 1/v the size each


def test_one_chunk_schedules_refuse_chunks():
    with pytest.raises(UserError, match="one model chunk per stage"):
        schedule("1f1b", 2, 4, chunks=2)


def test_bad_input():
    with pytest.raises(UserError, match="multiple of the stages"):
        interleaved(4, 6, 2)
    with pytest.raises(UserError, match="must be >= 1"):
        gpipe(0, 4)
    with pytest.raises(UserError, match="unknown"):
        schedule("zigzag", 2, 2)
    with pytest.raises(UserError, match="deadlocks"):
        simulate([[Op("B", 0), Op("F", 0)], [Op("F", 0), Op("B", 0)]])


def test_golden_diagram():
    """1F1B, 3 stages, 4 micro-batches, backward twice the forward: stage 0 runs F0-F2, waits for
    B0 to come back (4 idle units), then alternates; the last stage alternates from the start."""
    assert diagram(simulate(one_f_one_b(3, 4), forward=1, backward=2)) == "\n".join([
        "stage 0: 012....aa3bb.cc.dd",
        "stage 1: .01..aa2bb3cc.dd..",
        "stage 2: ..0aa1bb2cc3dd....",
    ])


def test_cli_prints_the_diagram(capsys):
    from hpclm.cli import main
    assert main(["schedule", "--pp", "4", "--micro-batches", "8", "--schedule", "interleaved", "--chunks", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage 3: ...0123" in out and "bubble 0.158" in out        # (p-1)/v / (m + (p-1)/v) = 1.5 / 9.5
    assert main(["schedule", "--pp", "0"]) == 2


def test_simulate_per_stage_times_gpipe_makespan_is_the_flow_shop_form():
    """GPipe with stage times f_s, b_s: the last forward ends at sum f + (m - 1) max f (identical jobs
    through a flow shop), the backward sweep adds sum b + (m - 1) max b; equal lists = one number."""
    f, b, m = [1.0, 1.5, 1.2], [2.0, 2.5, 3.5], 4
    slots = simulate(gpipe(3, m), forward=f, backward=b)
    span = max(x.end for x in slots)
    assert span == pytest.approx(sum(f) + sum(b) + (m - 1) * (max(f) + max(b)))
    assert simulate(one_f_one_b(3, m), forward=[1.0] * 3, backward=[2.0] * 3) == \
        simulate(one_f_one_b(3, m), forward=1.0, backward=2.0)


def test_peak_in_flight_weighs_chunks_by_size():
    """Interleaved p 2, m 2, v 2 with chunk 0 ten times larger: stage 0 runs F00 F10 F01 F11 before
    any backward (10 + 10 + 1 + 1 = 22 live), stage 1 runs F00 F10 F01 B01 F11 (at most 21); with
    every chunk of size 1 the weighted peak is the count."""
    ops = interleaved(2, 2, 2)
    assert [peak_in_flight(stage, lambda c: 10 if c == 0 else 1) for stage in ops] == [22, 21]
    for stage in ops:
        assert peak_in_flight(stage, lambda c: 1) == peak_in_flight(stage)
