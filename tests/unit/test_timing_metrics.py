"""Optional record columns: a strategy's per-rank metrics (gossip's consensus distance) and extra
evaluation fields go through the writer and reader, NaN where not measured, and `hpclm analyze`
reports them; a record without them reads as before."""
import math

import numpy as np

from hpclm.analysis.report import decentralized_lines
from hpclm.timing.reader import read_run
from hpclm.timing.recorder import Recorder


def test_metric_and_eval_columns_round_trip(tmp_path):
    rec = Recorder(tmp_path, None, {"config_json": "{}"}, flush_every=2, metrics=("consensus",),
                   eval_metrics=("val_loss_min", "val_loss_max"))
    for step in range(5):
        rec.log_step(step, {}, loss=1.0, metrics={"consensus": 0.5 / (step + 1)} if step % 2 else {})
    rec.log_eval(4, 2.0, 2.1, {"val_loss_min": 1.9, "val_loss_max": 2.3})
    rec.close()
    run = read_run(tmp_path)
    c = run.metrics["consensus"][:, 0]
    assert np.isnan(c[[0, 2, 4]]).all() and np.allclose(c[[1, 3]], [0.25, 0.125])
    assert run.evals["val_loss_min"].tolist() == [1.9] and run.evals["val_loss_max"].tolist() == [2.3]
    text = "\n".join(decentralized_lines(run))
    assert "2.500e-01 at step 2" in text and "1.250e-01 at step 4" in text and "1.9000 .. 2.3000" in text


def test_record_without_metrics(tmp_path):
    rec = Recorder(tmp_path, None, {"config_json": "{}"}, flush_every=2)
    rec.log_step(0, {}, loss=1.0)
    rec.log_eval(0, 2.0, math.nan)
    rec.close()
    run = read_run(tmp_path)
    assert run.metrics == {} and sorted(run.evals) == ["step", "train_loss", "val_loss"]
    assert decentralized_lines(run) == []
