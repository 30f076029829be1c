"""tracking.report_to: TensorBoard event files in output_dir/runs/ hold the same scalars as metrics.jsonl (read back
with TensorBoard's own reader), the evaluation report goes there as text, a listed tracker that is not installed
stops the run before anything is loaded, and the Trainer gets exactly the trackers the recipe lists."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
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


def run_sft(recipe: Path, *overrides: str, env: dict | None = None, hide: str | None = None,
            log: Path | None = None) -> subprocess.CompletedProcess | subprocess.Popen:
    """train/sft.py in a child process; `hide`: a package the child cannot import (as if it were not installed);
    with `log`, started in the background with its output going to that file."""
    prelude = f"import sys; sys.modules[{hide!r}] = None; " if hide else ""
    code = (f"{prelude}import runpy, sys; sys.argv = ['train/sft.py', *sys.argv[1:]]; "
            f"runpy.run_path('train/sft.py', run_name='__main__')")
    command = [sys.executable, "-c", code, "--config", str(recipe), *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    if log:  # a file, not a pipe: nobody reads the output while the run goes on
        with open(log, "w") as f:
            return subprocess.Popen(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_a_tracker_that_is_not_installed_stops_the_run_before_loading_anything(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "llama"))
    done = run_sft(recipe, "tracking.report_to=[mlflow]", hide="mlflow")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "tracking.report_to lists mlflow" in done.stderr and "sft-launcher[mlflow]" in done.stderr
    assert not (tmp_path / "out" / "data_report.json").exists()  # nothing prepared


def test_an_mlflow_store_that_cannot_be_opened_stops_the_run_before_loading_anything(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "llama"))
    (tmp_path / "a-file").write_text("")
    uri = (tmp_path / "a-file" / "mlruns").as_uri()  # a store under a file: no MLflow version can create it
    done = run_sft(recipe, "tracking.report_to=[mlflow]", env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"MLflow cannot open the store MLFLOW_TRACKING_URI={uri}" in done.stderr
    assert not (tmp_path / "out" / "data_report.json").exists()


def mlflow_client(out: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=(out / "mlruns").as_uri())


@pytest.mark.slow
def test_mlflow_run_holds_the_metrics_jsonl_scalars_and_continues_after_a_preemption(tmp_path, monkeypatch):
    """One MLflow run across a SIGUSR1 (checkpoint, exit 75) and the resumed run, holding exactly metrics.jsonl's
    scalars at their steps (the final evaluation included), the recipe, and no secret."""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "llama"), max_steps=40, save_steps=100)
    out = tmp_path / "out"
    secrets = {"HF_TOKEN": "hf_" + "q" * 30, "MLFLOW_TRACKING_TOKEN": "mlflow-secret-" + "z" * 20}
    overrides = ["tracking.report_to=[mlflow]", "data.validation_split=0.2", "train.eval_steps=10"]
    proc = run_sft(recipe, *overrides, env=secrets, log=tmp_path / "first.log")
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and '"loss"' in metrics.read_text()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]
    stopped = max(row["step"] for row in read_metrics(metrics))
    assert 1 <= stopped < 40
    run_id = (out / "mlflow_run_id.txt").read_text().strip()
    done = run_sft(recipe, *overrides, env=secrets)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "mlflow_run_id.txt").read_text().strip() == run_id

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked
    client = mlflow_client(out)
    experiment = client.get_experiment_by_name("sft")  # tracking.project
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.run_name == "out"  # one run, named for the folder
    logged: dict = {}
    for name in runs[0].data.metrics:
        for m in client.get_metric_history(run_id, name):
            logged.setdefault((name, m.step), []).append(m.value)
    recorded: dict = {}
    for row in read_metrics(metrics):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                recorded.setdefault((key, row["step"]), []).append(value)
    # the same scalars at the same steps, from both processes; besides them only the stopped process's end-of-training
    # summary, which metrics.jsonl drops when the run resumes (MLflow keeps what was logged)
    summary = {(key, stopped) for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second",
                                          "total_flos", "train_loss")}
    assert logged.keys() - recorded.keys() == summary and recorded.keys() <= logged.keys()
    logged[("epoch", stopped)].remove(recorded[("epoch", stopped)][0])  # the summary's own epoch
    for key, values in recorded.items():
        assert sorted(logged[key]) == pytest.approx(sorted(values), rel=1e-6), key
    assert [step for name, step in sorted(logged) if name == "loss"] == list(range(1, 41))  # none lost or repeated
    assert ("eval_loss", 40) in logged
    artifacts = Path(client.download_artifacts(run_id, "run_config.yaml", str(tmp_path / "artifacts")))
    assert artifacts.read_text() == (out / "run_config.yaml").read_text()
    for f in (out / "mlruns").rglob("*"):
        if f.is_file():
            assert not any(v.encode() in f.read_bytes() for v in secrets.values()), f


def test_evaluation_report_goes_to_the_training_runs_mlflow_run(tmp_path, monkeypatch):
    """`launch eval`'s metrics and report join the MLflow run training recorded in output_dir; without one, a run
    `<name>-eval` of its own. MLflow is set up from the recipe alone (no MLflow variables in the environment)."""
    import mlflow

    from train.tracking import MLFLOW_RUN_FILE, log_eval_to_mlflow, start_mlflow_run

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_NAME", "MLFLOW_RUN_ID",
                 "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(name, "")  # restored after the test, whatever the code under test sets
        monkeypatch.delenv(name)
    recipe = write_tiny_recipe(tmp_path, tmp_path)
    cfg = load_config(recipe, ["tracking.report_to=[mlflow]", "tracking.project=evals"])
    report = "# Evaluation\n\n| metric | base | fine-tuned |\n| --- | --- | --- |\n| rouge1_f1 | 0.1 | 0.6 |\n"
    results = {"base": {"rouge1_f1": 0.1, "eval_loss": 1.13}, "fine-tuned": {"rouge1_f1": 0.6, "eval_loss": 0.27}}
    assert log_eval_to_mlflow(load_config(recipe), results, report) is None  # not listed: nothing logged

    alone = log_eval_to_mlflow(cfg, results, report)  # no training run recorded yet
    training = start_mlflow_run(cfg, resuming=False)
    mlflow.end_run()
    assert (tmp_path / "out" / MLFLOW_RUN_FILE).read_text() == training != alone
    assert log_eval_to_mlflow(cfg, results, report) == training

    client = mlflow_client(tmp_path / "out")
    assert client.get_run(alone).info.run_name == "out-eval"
    run = client.get_run(training)
    assert run.info.experiment_id == client.get_experiment_by_name("evals").experiment_id
    assert run.data.metrics == {"eval_report/base/rouge1_f1": 0.1, "eval_report/base/eval_loss": 1.13,
                                "eval_report/fine-tuned/rouge1_f1": 0.6, "eval_report/fine-tuned/eval_loss": 0.27}
    text = Path(client.download_artifacts(training, "eval_report.md", str(tmp_path / "artifacts"))).read_text()
    assert text == report

    (tmp_path / "out" / MLFLOW_RUN_FILE).write_text("0" * 32)  # a run this store does not hold: a new one, no error
    other = log_eval_to_mlflow(cfg, results, report)
    assert other not in (training, alone) and client.get_run(other).info.run_name == "out-eval"
