"""Slurm, for real: `python -m launch slurm` renders and submits sbatch jobs to a two-node Slurm cluster that this test
starts on loopback (tests/slurm_cluster.py): a two-node job trains with one process per node over gloo and matches the
one-process losses; a job signalled for pre-emption and later requeued by force resumes with no step lost or
repeated, in the same W&B run; a failing job ends FAILED with a non-zero exit code and the reason in its log.
Where the cluster cannot be started (no packages and no root to install them) the cluster tests are skipped and say
why; rendering is tested everywhere."""

from __future__ import annotations

import json
import os
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
    # Slurm 22.05+: srun does not take sbatch's --cpus-per-task; the script passes it (8 per GPU by default)
    assert re.search(r"srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task=64 bash -c", script)
    assert "#SBATCH --cpus-per-task=64" in script
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
    assert ('python -m launch run --config "$RECIPE" --accelerate single_gpu --gpus 1 '
            '${OVERRIDES[@]+"${OVERRIDES[@]}"}') in script
    assert subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True).returncode == 0


def test_bad_recipe_or_combination_fails_before_anything_is_written(recipe, tmp_path):
    res = launch_slurm(recipe, "--nodes", "2", "--gpus-per-node", "0", "--submit", "train.max_step=3")
    assert res.returncode == 2 and "train.max_steps" in res.stderr and "Traceback" not in res.stderr
    res = launch_slurm(recipe, "--nodes", "2", "--gpus-per-node", "8", "--accelerate", "single_gpu", "--dry-run")
    assert res.returncode == 2 and "runs one process" in res.stderr


def test_new_options_render_as_sbatch_and_srun_lines(recipe, tmp_path):
    res = launch_slurm(recipe, "--nodes", "2", "--gres", "gpu:a100:4", "--mem", "500G", "--cpus-per-task", "32",
                       "--exclusive", "--constraint", "a100&ib", "--setup", "module load cuda/12.4",
                       "--setup", "source ~/venvs/sft/bin/activate", "--hf-home", "/shared/hf", "--offline",
                       "--time", "1-00:00:00", "--accelerate", "zero3", "--dry-run", f"output_dir={tmp_path / 'o'}")
    assert res.returncode == 0, res.stderr
    script = res.stdout
    for line in ["#SBATCH --gres=gpu:a100:4", "#SBATCH --mem=500G", "#SBATCH --cpus-per-task=32", "#SBATCH --exclusive",
                 "#SBATCH --constraint='a100&ib'", "#SBATCH --time=1-00:00:00",
                 "set +u\nmodule load cuda/12.4\nsource ~/venvs/sft/bin/activate\nset -u",
                 "export HF_HOME=/shared/hf", "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1",
                 "srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task=32 bash -c",
                 "--num_processes $(( SLURM_NNODES * 4 ))"]:
        assert line in script, line
    assert "#SBATCH --gpus-per-node" not in script  # --gres instead, never both
    assert script.index("set +u\nmodule load") > script.index("cd ")  # setup runs in the repository, then the check:
    assert "cannot import torch, transformers and accelerate: fix the slurm.setup / --setup lines" in script
    assert subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True).returncode == 0
    # the defaults: no setup given (the .venv or PATH, said), no HF settings (commented), GPUs per node
    res = launch_slurm(recipe, "--nodes", "1", "--gpus-per-node", "2", "--time", "1:00:00", "--dry-run")
    assert "if [ -f .venv/bin/activate ]; then set +u; source .venv/bin/activate; set -u; fi" in res.stdout
    assert "# export HF_HUB_OFFLINE=1" in res.stdout and "#SBATCH --gpus-per-node=2" in res.stdout
    assert "note: no slurm.setup or --setup: the job uses the" in res.stderr


def test_wrong_gres_mem_or_cpus_are_refused_with_the_fix(recipe):
    for args, message in [(["--gres", "gpu:4", "--gpus-per-node", "8"], "asks for 4 GPUs per node but --gpus-per-node"),
                          (["--gres", "shard:2"], "give GPUs per node as gpu:N or gpu:TYPE:N"),
                          (["--mem", "64 GB"], "memory per node as sbatch writes it, e.g. 500G"),
                          (["--cpus-per-task", "0"], "--cpus-per-task 0: must be 1 or more")]:
        res = launch_slurm(recipe, *args, "--dry-run")
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


def test_no_time_is_said_and_no_line_is_written(recipe, tmp_path):
    res = launch_slurm(recipe, "--gpus-per-node", "1", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --time" not in res.stdout and "# no --time given: the partition's default limit" in res.stdout
    assert "note: no --time: the job gets its partition's default time limit" in res.stderr


def test_dry_run_never_points_at_a_file_it_did_not_write(recipe, tmp_path):
    out = tmp_path / "o"
    res = launch_slurm(recipe, "--gpus-per-node", "1", "--time", "1:00:00", "--dry-run", f"output_dir={out}")
    assert res.returncode == 0 and not out.exists()
    assert "sbatch " + str(out) not in res.stdout  # nowhere does it say "sbatch <the file that is not there>"
    assert "# Not written (--dry-run): save this output to a file and submit it with sbatch FILE" in res.stdout
    assert res.stderr.count("\n") == res.stderr.count("note:")  # only notes on stderr: `> job.sbatch` keeps the script
    res = launch_slurm(recipe, "--gpus-per-node", "1", "--time", "1:00:00", f"output_dir={out}")
    written = out / "slurm" / "recipe.sbatch"
    assert res.returncode == 0 and f"wrote {written}" in res.stdout and f"submit with: sbatch {written}" in res.stdout
    assert f"# Submit:      sbatch {written}" in written.read_text()


def test_recipe_slurm_section_and_offline_model_check(recipe, tmp_path):
    import yaml

    cfg = yaml.safe_load(recipe.read_text())
    cfg["slurm"] = {"setup": ["module load cuda/12.4"], "offline": True, "hf_home": str(tmp_path / "hf")}
    with_slurm = tmp_path / "with_slurm.yaml"
    with_slurm.write_text(yaml.safe_dump(cfg))
    res = launch_slurm(with_slurm, "--setup", "source ~/venvs/x/bin/activate", "--gpus-per-node", "1",
                       "--time", "1:0:0", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "set +u\nmodule load cuda/12.4\nsource ~/venvs/x/bin/activate\nset -u" in res.stdout  # recipe's, then CLI's
    assert f"export HF_HOME={tmp_path / 'hf'}" in res.stdout and "export HF_HUB_OFFLINE=1" in res.stdout
    # offline, a hub id must already be in the job's HF_HOME: checked before anything is written
    res = launch_slurm(with_slurm, "--gpus-per-node", "1", "--time", "1:0:0", "model.name_or_path=Qwen/Qwen3-8B",
                       "model.tokenizer_name_or_path=null")
    assert res.returncode == 2 and "the job runs offline (--offline or slurm.offline)" in res.stderr, res.stderr
    assert f"hf download Qwen/Qwen3-8B --cache-dir {tmp_path / 'hf' / 'hub'}" in res.stderr
    assert not (tmp_path / "o").exists()
    # a local folder that does not exist, as the job sees it (from the repository root)
    res = launch_slurm(recipe, "--gpus-per-node", "1", "--dry-run", "model.name_or_path=outputs/no-such-model-dir/x")
    assert res.returncode == 2 and "there is no folder 'outputs/no-such-model-dir/x'" in res.stderr
    res = launch_slurm(recipe, "--gpus-per-node", "1", "--dry-run", "slurm.setup=['']")
    assert res.returncode == 2 and "slurm.setup.0: is empty" in res.stderr


def stub_commands(folder: Path) -> Path:
    """python, srun and scontrol that record their arguments (one per line, then ---) and succeed."""
    folder.mkdir()
    for name in ("python", "srun", "scontrol"):
        stub = folder / name
        stub.write_text(f'#!/bin/sh\n{{ echo "{name}"; for a in "$@"; do echo "arg:$a"; done; echo ---; }} '
                        f'>> "{folder}/calls"\n[ "{name}" = scontrol ] && echo n1\nexit 0\n')
        stub.chmod(0o755)
    return folder


def calls(folder: Path) -> list[list[str]]:
    out = []
    for block in (folder / "calls").read_text().split("---\n"):
        lines = block.strip("\n").split("\n") if block.strip() else []
        if lines:
            out.append([lines[0]] + [line[4:] for line in lines[1:]])
    return out


BASH42 = os.environ.get("SFT_TEST_BASH42")  # a real bash 4.2 (CentOS/RHEL 7's shell), when the machine has one


@pytest.mark.parametrize("shell", ["bash", "bash-4.2"])
@pytest.mark.parametrize("nodes", [1, 2])
def test_empty_override_list_works_under_set_u_as_in_bash_4_2(recipe, tmp_path, shell, nodes):
    """`"${OVERRIDES[@]}"` of an empty array is an unbound variable under `set -u` in bash 4.2 (fixed in 4.4). The
    rendered script, with no overrides at all, runs its commands with stand-ins that record their arguments: no
    empty argument, nothing unbound. Every array expansion in it uses the ${A[@]+"${A[@]}"} form, which is what bash
    4.2 needs (checked here on any bash; SFT_TEST_BASH42=/path/to/bash-4.2 runs the script under a real 4.2 too)."""
    exe = BASH42 if shell == "bash-4.2" else "bash"
    if exe is None:
        pytest.skip("no bash 4.2 here: set SFT_TEST_BASH42 to one (the static check below covers the idiom)")
    stubs = stub_commands(tmp_path / "stubs")
    res = launch_slurm(recipe, "--nodes", str(nodes), "--gpus-per-node", "0", "--time", "1:00:00", "--dry-run",
                       "--setup", f"export PATH={stubs}:$PATH")
    assert res.returncode == 0, res.stderr
    script = res.stdout
    assert "OVERRIDES=()" in script
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    bare = re.sub(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', "", code)
    assert "[@]" not in bare, [line for line in bare.splitlines() if "[@]" in line]  # no unguarded expansion
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURMD_NODENAME": "n1", "SLURM_JOB_NODELIST": "n1"}
    run = subprocess.run([exe, str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "unbound variable" not in run.stderr, run.stderr
    recorded = calls(stubs)
    prepare = next(c for c in recorded if c[:3] == ["python", "-m", "launch"] and c[3] == "prepare")
    assert prepare == ["python", "-m", "launch", "prepare", "--config", str(recipe)]  # no empty argument
    if nodes == 1:
        run_call = next(c for c in recorded if c[:4] == ["python", "-m", "launch", "run"])
        assert run_call[-2:] == ["--gpus", "1"]
    else:
        srun = next(c for c in recorded if c[0] == "srun")
        assert srun[-1] == "_" and "--cpus-per-task=4" in srun  # nothing after `_`: no override, not even ''


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
    assert re.search(r"\[node n1\] machine_rank=0 num_machines=2 cpus=\d+", text)  # each task logs its CPUs
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


@pytest.mark.slow
def test_single_node_job_with_gres_mem_exclusive_constraint_setup_and_offline(cluster, recipe, tmp_path):
    """The new options on the real cluster: --gres gpu:2 (fake GPUs), --mem, --exclusive, --constraint, setup lines
    from the recipe and the command line (one reads an unset variable: setup runs with set +u), --offline and
    --hf-home; two CPU processes (cpu_ddp) train to the end."""
    import yaml

    if not cluster.gres:
        pytest.skip("the local cluster has no fake GPUs here (mknod refused), so --gres cannot be scheduled")
    cfg = yaml.safe_load(recipe.read_text())
    cfg["slurm"] = {"setup": ["export FROM_RECIPE=recipe-line"]}
    job_recipe = tmp_path / "gres.yaml"
    job_recipe.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "job"
    hf_home = tmp_path / "hf_home"
    res = launch_slurm(job_recipe, "--nodes", "1", "--gres", "gpu:2", "--accelerate", "cpu_ddp", "--cpus-per-task", "2",
                       "--mem", "2G", "--exclusive", "--constraint", "sftlocal", "--time", "30:00",
                       "--setup", 'echo "setup ran: ${NEVER_SET_ANYWHERE} $FROM_RECIPE"; source .venv/bin/activate',
                       "--offline", "--hf-home", str(hf_home), "--submit", f"output_dir={out}", "train.max_steps=4",
                       env_extra={"SLURM_CONF": str(cluster.conf), "TMPDIR": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = re.search(r"submitted job (\d+)", res.stdout).group(1)
    log = Path(re.search(r"log: (\S+)", res.stdout).group(1))
    record = cluster.wait(job_id, timeout=600)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", (record, text[-3000:])
    assert "gres:gpu:2" in record.get("TresPerNode", "") and record["MinMemoryNode"] == "2G", record
    assert record["OverSubscribe"] == "NO" and record["NumCPUs"] == "4", record  # --exclusive: the whole node
    assert record["Features"] == "sftlocal", record
    assert "setup ran:  recipe-line" in text  # the recipe's line ran first, the unset variable did not stop it
    assert re.search(r"gpus=0,1\b", text)  # Slurm gave the job its two (fake) GPUs
    assert f"HF_HOME={hf_home} HF_HUB_OFFLINE=1" in text
    assert "[rank 1]" in text and [s for s, _ in step_losses(out)] == [1, 2, 3, 4]  # two processes, to the end


@pytest.mark.slow
def test_sbatch_refusals_reach_the_user(cluster, recipe, tmp_path):
    """What the cluster cannot give (an unknown feature, more memory than a node has) is sbatch's own message."""
    env = {"SLURM_CONF": str(cluster.conf)}
    for args, said in [(["--constraint", "nosuchfeature"], "Invalid feature specification"),
                       (["--mem", "999G"], "Requested node configuration is not available")]:
        res = launch_slurm(recipe, "--gpus-per-node", "0", "--time", "5:00", *args, "--submit",
                           f"output_dir={tmp_path / 'o'}", env_extra=env)
        assert res.returncode != 0 and "error: sbatch refused the job" in res.stderr and said in res.stderr, res.stderr
    res = launch_slurm(recipe, "--gpus-per-node", "0", "--dry-run", env_extra=env)  # no --time: the partition's limits
    assert "(partition debug: DefaultTime=NONE, MaxTime=UNLIMITED" in res.stderr, res.stderr
