"""tracking.report_to: TensorBoard event files in output_dir/runs/ hold the same scalars as metrics.jsonl (read back
with TensorBoard's own reader), the evaluation report goes there as text, a listed tracker that is not installed
stops the run before anything is loaded, and the Trainer gets exactly the trackers the recipe lists."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.assets import tiny_model_dir
from tests.tiny_model import write_tiny_recipe
from train.callbacks import read_metrics
from train.config import load_config

REPO = Path(__file__).resolve().parent.parent


def event_scalars(folder: Path) -> dict:
    """{(tag, step): [values]} of every event file under folder, read with TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                scalars.setdefault((tag, event.step), []).append(event.value)
    return scalars


def tensorboard_name(key: str) -> str:
    """The Trainer's TensorBoard tag of a metrics.jsonl key (transformers' rewrite_logs)."""
    return f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_metrics_jsonl_scalars(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "llama"))
    done = subprocess.run([sys.executable, "train/sft.py", "--config", str(recipe), "tracking.report_to=[tensorboard]",
                           "data.validation_split=0.2", "train.eval_steps=2"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert not (out / "wandb").exists()  # only the listed tracker
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1 and list(runs[0].glob("events.out.tfevents.*"))
    scalars = event_scalars(out / "runs")
    recorded: dict = {}
    for row in read_metrics(out / "metrics.jsonl"):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                recorded.setdefault((tensorboard_name(key), row["step"]), []).append(value)
    assert scalars.keys() == recorded.keys()  # the same scalars at the same steps, nothing more, nothing less
    for name, values in recorded.items():  # (two evaluations share the last step: the periodic and the final one)
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
                   for a, b in zip(sorted(scalars[name]), sorted(values))), (name, scalars[name], values)
    tags = {tag for tag, _ in scalars}
    assert {"train/loss", "eval/loss", "train/learning_rate", "train/tokens_per_s"} <= tags
    assert len(recorded) >= 30


def test_evaluation_report_goes_to_tensorboard_as_text_and_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.tracking import log_eval_to_tensorboard

    recipe = write_tiny_recipe(tmp_path, tmp_path)
    report = "# Evaluation\n\n| metric | base | fine-tuned |\n| --- | --- | --- |\n| rouge1_f1 | 0.1 | 0.6 |\n"
    results = {"base": {"rouge1_f1": 0.1, "eval_loss": 1.13}, "fine-tuned": {"rouge1_f1": 0.6, "eval_loss": 0.27}}
    assert log_eval_to_tensorboard(load_config(recipe), results, report) is None  # not listed: nothing written
    folder = log_eval_to_tensorboard(load_config(recipe, ["tracking.report_to=[tensorboard]"]), results, report)
    assert folder == tmp_path / "out" / "runs" / "eval"
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    accumulator.Reload()
    text = accumulator.Tensors("eval_report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == report
    assert accumulator.Scalars("eval_report/fine-tuned/rouge1_f1")[0].value == pytest.approx(0.6)
    assert accumulator.Scalars("eval_report/base/eval_loss")[0].value == pytest.approx(1.13)


def test_trainer_gets_the_listed_trackers(tmp_path):
    from train.tracking import trainer_report_to

    recipe = write_tiny_recipe(tmp_path, tmp_path)
    assert trainer_report_to(load_config(recipe)) == []  # wandb listed by default, but its mode is disabled
    assert trainer_report_to(load_config(recipe, ["tracking.wandb_mode=offline"])) == ["wandb"]
    assert trainer_report_to(load_config(recipe, ["tracking.report_to=[wandb,tensorboard]",
                                                  "tracking.wandb_mode=online"])) == ["wandb", "tensorboard"]
    assert trainer_report_to(load_config(recipe, ["tracking.report_to=[none]"])) == []
    assert trainer_report_to(load_config(recipe, ["tracking.report_to=tensorboard"])) == ["tensorboard"]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_a_tracker_that_is_not_installed_stops_the_run_before_loading_anything(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "llama"))
    done = subprocess.run([sys.executable, "train/sft.py", "--config", str(recipe), "tracking.report_to=[mlflow]"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "tracking.report_to lists mlflow" in done.stderr and "sft-launcher[mlflow]" in done.stderr
    assert not (tmp_path / "out" / "data_report.json").exists()  # nothing prepared
