"""Analysis numbers on synthetic records with known values: fractions, communication, stragglers, scaling."""
from pathlib import Path

import numpy as np
import pytest

from hpclm.analysis.metrics import scaling, summarize
from hpclm.errors import UserError
from hpclm.timing import schema
from hpclm.timing.reader import RunRecord

WARMUP_STEP_TIME = 10.0


def synthetic(step_times, n_steps=6, tokens=100.0):
    """A record whose row 0 is a slow warm-up and whose rows 1.. repeat `step_times` (one per rank)."""
    world = len(step_times)

    def constant(v):
        return np.full((n_steps, world), v)

    times = {r: constant(0.0) for r in schema.REGIONS}
    times.update(forward=constant(0.05), backward=constant(0.03), optimizer=constant(0.01),
                 comm=constant(0.004), comm_wait=constant(0.006), comm_async=constant(0.03))
    step_time = np.tile(np.asarray(step_times, dtype=float), (n_steps, 1))
    step_time[0] = WARMUP_STEP_TIME
    per_rank = dict(step_time=step_time, bytes_sent=constant(1e6), bytes_recv=constant(2e6),
                    bytes_uncompressed=constant(4e6), loss=constant(3.0), tokens=constant(tokens))
    loss = np.linspace(4.0, 3.0, n_steps)
    per_step = dict(lr=np.full(n_steps, 1e-3), grad_norm=np.ones(n_steps), loss=loss,
                    elapsed=np.cumsum(step_time.max(axis=1)))
    return RunRecord(path=Path(f"/runs/p{world}/timing.h5"), meta={"world_size": world},
                     step=np.arange(n_steps), times=times, per_rank=per_rank, per_step=per_step,
                     evals={"step": np.array([], dtype=int), "val_loss": np.array([]), "train_loss": np.array([])})


def test_fractions_communication_throughput_and_stragglers():
    s = summarize(synthetic([0.1, 0.1, 0.104, 0.12]), skip_steps=1)
    total = 0.1 + 0.1 + 0.104 + 0.12
    assert s.name == "p4" and s.world_size == 4 and s.steps == 5
    assert s.compute_fraction == pytest.approx(4 * 0.09 / total)
    assert s.comm_fraction == pytest.approx(4 * 0.01 / total)
    assert s.other_fraction == pytest.approx(1 - 4 * 0.1 / total)
    assert s.exposed_comm_s == pytest.approx(0.01)
    assert s.hidden_comm_s == pytest.approx(0.024)
    assert s.tokens_per_s == pytest.approx(400 / 0.12)
    assert (s.bytes_sent, s.bytes_recv, s.compression_ratio) == (1e6, 2e6, 4.0)
    assert (s.step_time.min, s.step_time.median, s.step_time.max) == pytest.approx((0.1, 0.102, 0.12))
    assert set(s.regions) == {"forward", "backward", "optimizer", "comm", "comm_wait", "comm_async"}
    assert [x.rank for x in s.stragglers] == [3]   # rank 2 is only 2% above the median
    assert s.stragglers[0].excess == pytest.approx(0.12 / 0.102 - 1)
    assert s.stragglers[0].excess_s == pytest.approx(0.018)
    assert s.final_loss == 3.0


def test_warmup_rows_are_skipped_and_too_few_steps_rejected():
    record = synthetic([0.1, 0.1])
    assert summarize(record, skip_steps=0).tokens_per_s == pytest.approx(6 * 200 / (WARMUP_STEP_TIME + 5 * 0.1))
    with pytest.raises(UserError, match="skip-steps"):
        summarize(record, skip_steps=6)


def test_hidden_communication_needs_background_times():
    record = synthetic([0.1])
    record.times["comm_async"][:] = 0.0
    assert summarize(record).hidden_comm_s is None


def test_speedup_and_efficiency_against_the_smallest_run():
    small = summarize(synthetic([0.1, 0.1]))            # 200 tokens / 0.1 s = 2000 tokens/s
    large = summarize(synthetic([0.2] * 8))             # 800 tokens / 0.2 s = 4000 tokens/s
    assert scaling([large, small]) == [pytest.approx((2.0, 0.5)), pytest.approx((1.0, 1.0))]


def test_last_validation_loss_is_the_last_finite_evaluation():
    record = synthetic([0.1, 0.1])
    assert np.isnan(summarize(record).final_val_loss)          # no evaluation recorded
    record.evals.update(step=np.array([2, 4, 5]), val_loss=np.array([2.5, 2.25, np.nan]),
                        train_loss=np.array([2.6, 2.3, 2.2]))
    assert summarize(record).final_val_loss == 2.25
