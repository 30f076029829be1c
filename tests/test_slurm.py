"""Slurm, for real: `python -m launch slurm` renders and submits sbatch jobs to a two-node Slurm cluster that this test
starts on loopback (tests/slurm_cluster.py): a two-node job trains with one process per node over gloo and matches the
one-process losses; a job signalled for pre-emption and later requeued by force resumes with no step lost or
repeated, in the same W&B run; a failing job ends FAILED with a non-zero exit code and the reason in its log.
Where the cluster cannot be started (no packages and no root to install them) the cluster tests are skipped and say
why; rendering is tested everywhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import LocalSlurm, SlurmUnavailable
from launch.assets import tiny_model_dir
from tests.tiny_model import write_tiny_recipe
from train.callbacks import read_metrics

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm-recipe")
    return write_tiny_recipe(root, tiny_model_dir(root / "llama"), max_steps=8, save_steps=4)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no local Slurm cluster: {e}")
    yield c
    c.stop()


def env(extra=None) -> dict:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def launch_slurm(recipe, *args, env_extra=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", "slurm", "--config", str(recipe), *args], cwd=REPO,
                          env=env(env_extra), capture_output=True, text=True, timeout=120)


def submit(cluster, recipe, out, *overrides, nodes=2) -> tuple[str, Path]:
    res = launch_slurm(recipe, "--nodes", str(nodes), "--gpus-per-node", "0", "--submit", "--time", "30:00",
                       f"output_dir={out}", *overrides, env_extra={"SLURM_CONF": str(cluster.conf),
                                                                  "TMPDIR": str(Path(out).parent)})
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = re.search(r"submitted job (\d+)", res.stdout).group(1)
    log = Path(re.search(r"log: (\S+)", res.stdout).group(1))
    return job_id, log


def step_losses(out) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(Path(out) / "metrics.jsonl")
            if "loss" in r and "train_runtime" not in r]


def one_process(recipe, out, *overrides) -> list[tuple[int, float]]:
    """The reference: one process with the global batch of the two-node job (2 nodes x 2 rows)."""
    res = subprocess.run([sys.executable, "train/sft.py", "--config", str(recipe), f"output_dir={out}",
                          "train.per_device_batch_size=4", *overrides], cwd=REPO, env=env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return step_losses(out)


def wait_for(predicate, timeout=300, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"waited {timeout} s for {what}")


# ---------------------------------------------------------------------------------------------------------------------
# Rendering (no cluster needed)
# ---------------------------------------------------------------------------------------------------------------------

def test_multi_node_script_expands_ranks_inside_each_task(recipe, tmp_path):
    res = launch_slurm(recipe, "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--account", "proj",
                       "--time", "12:00:00", "--accelerate", "zero3", "--dry-run", f"output_dir={tmp_path / 'o'}",
                       "train.max_steps=100")
    assert res.returncode == 0, res.stderr
    script = res.stdout
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=12:00:00", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@300", f"#SBATCH --output={tmp_path / 'o'}/slurm/%x-%j.out",
                 "OVERRIDES=(output_dir=" + str(tmp_path / "o") + " train.max_steps=100)",
                 "python -m launch prepare --config"]:
        assert line in script, line
    # the training command sits in single quotes, so each task expands its own node id and the node count
    block = re.search(r"srun [^\n]*bash -c '(.*?)' _ ", script, re.S).group(1)
    assert '--machine_rank "$SLURM_NODEID"' in block and '--num_machines "$SLURM_NNODES"' in block
    assert "--num_processes $(( SLURM_NNODES * 8 ))" in block
    assert "--config_file configs/accelerate/zero3.yaml" in block and "--mixed_precision no" in block  # fp32 recipe
    assert "'" not in block  # nothing in it closes the quotes early
    assert "# export NCCL_SOCKET_IFNAME" in script and "--main_process_port \"$MAIN_PORT\"" in block
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_single_node_script_runs_through_launch_run(recipe, tmp_path):
    res = launch_slurm(recipe, "--nodes", "1", "--gpus-per-node", "1", "--dry-run", f"output_dir={tmp_path / 'o'}")
    assert res.returncode == 0, res.stderr
    script = res.stdout
    assert "#SBATCH --nodes=1" in script and "#SBATCH --gpus-per-node=1" in script
    assert "#SBATCH --partition" not in script and "#SBATCH --account" not in script  # optional lines dropped
    assert 'python -m launch run --config "$RECIPE" --accelerate single_gpu --gpus 1 "${OVERRIDES[@]}"' in script
    assert subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True).returncode == 0


def test_bad_recipe_or_combination_fails_before_anything_is_written(recipe, tmp_path):
    res = launch_slurm(recipe, "--nodes", "2", "--gpus-per-node", "0", "--submit", "train.max_step=3")
    assert res.returncode == 2 and "train.max_steps" in res.stderr and "Traceback" not in res.stderr
    res = launch_slurm(recipe, "--nodes", "2", "--gpus-per-node", "8", "--accelerate", "single_gpu", "--dry-run")
    assert res.returncode == 2 and "runs one process" in res.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Against the real cluster
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.distributed
def test_two_node_job_trains_with_machine_ranks_0_and_1_and_matches_one_process(cluster, recipe, tmp_path):
    job_id, log = submit(cluster, recipe, tmp_path / "job")
    record = cluster.wait(job_id, timeout=600)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", (record, text[-3000:])
    assert "machine_rank=0 num_machines=2" in text and "machine_rank=1 num_machines=2" in text
    assert "[node n1] machine_rank=0" in text and "[node n2] machine_rank=1" in text
    for rank in (0, 1):
        assert f"[rank {rank}] world_size=2 process_index={rank}" in text
    assert json.loads((tmp_path / "job" / "train_results.json").read_text())["world_size"] == 2
    reference = one_process(recipe, tmp_path / "ref")
    two_nodes = step_losses(tmp_path / "job")
    assert [s for s, _ in two_nodes] == [s for s, _ in reference] == list(range(1, 9))
    assert [x for _, x in two_nodes] == pytest.approx([x for _, x in reference], abs=1e-5)


@pytest.mark.slow
@pytest.mark.distributed
def test_preempted_then_requeued_job_resumes_without_losing_or_repeating_a_step(cluster, recipe, tmp_path):
    """First the graceful path (USR1 to the batch script, as `--signal=B:USR1@300` sends: checkpoint, requeue), then
    a forced `scontrol requeue` mid-training; the job still completes with every step once and the reference losses."""
    out = tmp_path / "job"
    steps = ["train.max_steps=40", "train.save_steps=4", "train.save_total_limit=2"]
    job_id, log = submit(cluster, recipe, out, *steps, "tracking.wandb_mode=offline")

    def logged():
        return max([s for s, _ in step_losses(out)], default=0)

    wait_for(lambda: logged() >= 6, what="step 6 of the first run")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=cluster.env(), check=True)
    wait_for(lambda: int(cluster.job(job_id).get("Restarts", 0)) >= 1, what="the requeue after USR1")
    first_stop = logged()
    wait_for(lambda: cluster.job(job_id).get("JobState") == "RUNNING" and logged() >= first_stop + 6,
             what="progress after the first requeue")
    subprocess.run(["scontrol", "requeue", job_id], env=cluster.env(), check=True)
    wait_for(lambda: int(cluster.job(job_id).get("Restarts", 0)) >= 2, what="the forced requeue")
    record = cluster.wait(job_id, timeout=600)
    text = log.read_text(errors="replace")
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", (record, text[-3000:])
    assert "pre-emption signal: checkpointing" in text and "requeueing" in text
    assert text.count("SIGUSR1: finishing this step") == 2  # both nodes' training processes checkpointed
    assert "start (restart 2)" in text
    assert re.search(r"\[rank 0\] resume from .*checkpoint-\d+", text)

    resumed = step_losses(out)
    assert [s for s, _ in resumed] == list(range(1, 41))  # no step lost or repeated across three runs
    reference = one_process(recipe, tmp_path / "ref", *steps)
    assert [x for _, x in resumed] == pytest.approx([x for _, x in reference], abs=1e-5)
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 3 and all(r.name.endswith(run_id) for r in runs)  # one W&B run, resumed twice


@pytest.mark.slow
@pytest.mark.distributed
def test_failing_training_fails_the_job_with_its_exit_code_and_reason(cluster, recipe, tmp_path):
    job_id, log = submit(cluster, recipe, tmp_path / "job", "method=full", "train.learning_rate=1e20")
    record = cluster.wait(job_id, timeout=600)
    text = log.read_text(errors="replace")
    assert record["JobState"] == "FAILED" and record["ExitCode"] != "0:0", record
    assert "loss became NaN or infinite" in text and "training exited with code" in text
    assert "requeueing" not in text  # a failure is not a pre-emption


@pytest.mark.slow
def test_single_node_job_checkpoints_on_usr1_requeues_and_completes(cluster, recipe, tmp_path):
    """The single-node template: USR1 reaches `launch run`, which passes it to training; exit 75; requeued; done."""
    out = tmp_path / "job"
    job_id, log = submit(cluster, recipe, out, "train.max_steps=80", "train.save_steps=100", nodes=1)
    wait_for(lambda: max([s for s, _ in step_losses(out)], default=0) >= 4, what="step 4")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=cluster.env(), check=True)
    record = cluster.wait(job_id, timeout=600)
    text = log.read_text(errors="replace")
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", (record, text[-3000:])
    assert "training exited with code 75" in text and "requeueing" in text
    assert "# cpu: chosen with --accelerate" in text  # launch run printed its choice and command
    assert [s for s, _ in step_losses(out)] == list(range(1, 81))
