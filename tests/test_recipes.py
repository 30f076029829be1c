"""Plans that match commands: the shipped recipes' header commands are what `python -m launch run` prints; the printed
command carries the micro-batch, accumulation and checkpointing the plan recommends (or says why it keeps the
recipe's); the global batch before and after --gpus; `launch plan --config` finds a hub model's shape offline the same
way `launch run` does (configs/models/ by hub id); --gpu-mem alone names no card and estimates no speed.

Everything runs offline with an empty HF_HOME (no cached hub configs) and CUDA hidden, as on a login node: the headers
are written for 80 GB GPUs planned from such a machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import load_config
from train.plan import planner as P
from train.plan import shape as S

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "configs" / "recipes").glob("*.yaml"))
RUN_LINE = re.compile(r"^# (?P<label>[^:]+):\s+python -m launch run (?P<args>.+)$")
RUNS_LINE = re.compile(r"^#\s+runs:\s+(?P<command>.+?)(?:\s{2,}\(.*\))?$")


@pytest.fixture(scope="module")
def login_node_env(tmp_path_factory):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path_factory.mktemp("empty_hf_home")),
            "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}


def launch(env, *commands: list[str]) -> list[tuple[int, str, str]]:
    """Run several `python -m launch ...` commands in one interpreter (one torch import): (exit code, stdout,
    stderr) each."""
    code = ("import contextlib, io, json, sys\nfrom launch.__main__ import main\nresults = []\n"
            f"for argv in {json.dumps([list(c) for c in commands])}:\n"
            "    out, err = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "        rc = main(argv)\n"
            "    results.append((rc, out.getvalue(), err.getvalue()))\n"
            "print('RESULTS' + json.dumps(results))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [tuple(r) for r in json.loads(res.stdout.split("RESULTS", 1)[1])]


def header_commands(recipe: Path) -> list[tuple[str, list[str], str]]:
    """(label, `launch run` arguments, the command the header says it runs) for each pair of header lines."""
    lines = [line for line in recipe.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    pairs = []
    for line, following in zip(lines, lines[1:]):
        run, runs = RUN_LINE.match(line), RUNS_LINE.match(following)
        if run and runs:
            pairs.append((run["label"], run["args"].split(), runs["command"]))
    return pairs


def test_every_recipe_header_command_is_what_launch_run_prints(login_node_env):
    pairs = [(recipe, *pair) for recipe in RECIPES for pair in header_commands(recipe)]
    assert {recipe.name for recipe, *_ in pairs} == {r.name for r in RECIPES}  # every recipe shows one
    results = launch(login_node_env, *(["run", *args, "--dry-run"] for _, _, args, _ in pairs))
    for (recipe, label, args, expected), (rc, out, err) in zip(pairs, results):
        assert rc == 0, (recipe.name, err)
        printed = out.strip().splitlines()[-1]
        assert printed == expected, \
            f"{recipe.name} ({label}): the header says\n  {expected}\nlaunch run prints\n  {printed}"
    # the Slurm lines of the headers render (the same recipe, the same choice)
    slurm = [(recipe, line.split("python -m launch slurm ", 1)[1].replace("--submit", "--dry-run").split())
             for recipe in RECIPES for line in recipe.read_text().splitlines()
             if line.startswith("#") and "python -m launch slurm " in line]
    for (recipe, args), (rc, out, err) in zip(slurm, launch(login_node_env, *(["slurm", *a] for _, a in slurm))):
        assert rc == 0 and "accelerate launch --config_file configs/accelerate/zero3.yaml" in out, (recipe.name, err)


def test_the_printed_command_carries_the_plans_setting_and_the_global_batch(login_node_env):
    recipe = "configs/recipes/llama3_varco_8b_finance_lora.yaml"
    (rc, out, err), (_, kept, _), (_, mine, _), (_, one, _) = launch(
        login_node_env, ["run", "--config", recipe, "--gpus", "8", "--dry-run"],
        ["run", "--config", recipe, "--gpus", "8", "--dry-run", "--recipe-batch"],
        ["run", "--config", recipe, "--gpus", "8", "--dry-run", "train.per_device_batch_size=2"],
        ["run", "--config", recipe, "--gpus", "1", "--dry-run"])
    assert rc == 0, err
    command = out.strip().splitlines()[-1]
    # the plan, computed here independently: the recipe on 8 x 80 GiB with the shape configs/models/ gives this model
    cfg = load_config(REPO / recipe)
    shape = S.read_shape(str(REPO / "configs/models/llama3-8b.json"))
    plan = P.make_plan(shape, cfg, P.Hardware(gpus_per_node=8, gpu_mem_gib=80.0))
    wanted = plan.recommended.overrides
    recipe_setting = [f"train.per_device_batch_size={cfg.train.per_device_batch_size}",
                      f"train.gradient_accumulation_steps={cfg.train.gradient_accumulation_steps}",
                      f"train.gradient_checkpointing={str(cfg.train.gradient_checkpointing).lower()}"]
    assert wanted != recipe_setting  # so the command must change something
    applied = load_config(REPO / recipe, command.split(f"--config {recipe}", 1)[1].split())
    assert [f"train.per_device_batch_size={applied.train.per_device_batch_size}",
            f"train.gradient_accumulation_steps={applied.train.gradient_accumulation_steps}",
            f"train.gradient_checkpointing={str(applied.train.gradient_checkpointing).lower()}"] == wanted
    b, a = cfg.train.per_device_batch_size, cfg.train.gradient_accumulation_steps
    assert applied.train.per_device_batch_size * applied.train.gradient_accumulation_steps == b * a  # same batch
    assert "# applies the plan's" in out and "--recipe-batch keeps the recipe's" in out
    assert f"global batch: {b * a} sequences per optimizer step as the recipe is written for one GPU" in out
    assert f"-> {b * a * 8} on 8 processes ({b} x {a} x 8)" in out
    # --recipe-batch, or a batch key on the command line: the recipe's (or the user's) setting, said plainly
    assert kept.strip().splitlines()[-1].endswith(f"--config {recipe}")
    assert "(--recipe-batch); the plan would use" in kept
    assert mine.strip().splitlines()[-1].endswith("train.per_device_batch_size=2")
    assert "(train.per_device_batch_size given on the command line); the plan would use" in mine
    assert f"# global batch: {b * a} sequences per optimizer step (micro-batch {b} x accumulation {a})" in one


def test_launch_plan_config_finds_the_shape_offline_as_launch_run_does(login_node_env):
    hub_recipes = [r for r in RECIPES if "/" in load_config(r).model.name_or_path and
                   not load_config(r).model.name_or_path.startswith(".")]
    commands = []
    for recipe in hub_recipes:
        commands += [["plan", "--config", str(recipe), "--gpus-per-node", "8", "--gpu-mem", "80", "--json"],
                     ["run", "--config", str(recipe), "--gpus", "8", "--dry-run"]]
    results = launch(login_node_env, *commands)
    for recipe, (plan_res, run_res) in zip(hub_recipes, zip(results[::2], results[1::2])):
        assert plan_res[0] == 0 and run_res[0] == 0, (recipe.name, plan_res[2], run_res[2])
        planned = json.loads(plan_res[1])
        name = load_config(recipe).model.name_or_path
        listed = [p for p in (REPO / "configs/models").glob("*.json") if name in json.loads(p.read_text())["_hub_ids"]]
        shape = S.read_shape(str(listed[0])) if listed else S.shape_from_name(name)  # what each recipe must get
        assert planned["model"]["parameters"] == (shape.exact_parameters or shape.parameters().total), recipe.name
        origin = planned["model"]["origin"]
        assert (f"configs/models/{listed[0].name}" in origin) if listed else ("size in the name" in origin)
        assert f"# {planned['recommended']['accelerate']}: " in run_res[1]  # the same choice
        assert f"{planned['model']['parameters'] / 1e9:.1f}B parameters" in run_res[1]
        assert f"shape from {origin}" in run_res[1]


def test_gpu_mem_without_gpu_estimates_no_speed_instead_of_an_h100s():
    cfg = load_config(REPO / "configs/recipes/qwen3_8b_mna_lora.yaml")
    shape = S.read_shape("qwen3-8b")
    custom = P.make_plan(shape, cfg, P.hardware(None, gpu_mem_gib=24))
    assert custom.hardware.tflops == 0 and custom.step_seconds == 0 and custom.recommended is not None
    text = P.render(custom)
    assert "speed not estimated" in text and "--gpu-tflops" in text and "989" not in text
    with_tflops = P.make_plan(shape, cfg, P.hardware(None, gpu_mem_gib=24, tflops=165.2))
    assert with_tflops.step_seconds > 0 and "1 x 165.2 TFLOP/s" in P.render(with_tflops)
    named = P.make_plan(shape, cfg, P.hardware("a100", gpu_mem_gib=40))  # --gpu names the card: its speed
    assert named.hardware.tflops == P.GPUS["a100"].bf16_tflops and named.step_seconds > 0
    default = P.make_plan(shape, cfg, P.hardware())  # nothing given: an H100, and the setup line says so
    assert default.hardware.tflops == P.GPUS["h100"].bf16_tflops and "H100" in P.render(default)
