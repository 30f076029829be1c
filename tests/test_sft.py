"""Real training runs of train/sft.py on a tiny model built in code: one process, two processes (DDP over gloo),
full / LoRA / QLoRA, adapters that reload and merge to the trained model's logits, W&B offline, user errors."""

from __future__ import annotations

import json
import random
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.assets import tiny_model_dir
from tests.tiny_model import write_tiny_recipe
from train.config import load_config
from train.callbacks import read_metrics

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture()
def recipe(tmp_path, tiny_model):
    """A recipe on the tiny model and 32 short Korean/English conversations (distinct, so dedup keeps them all)."""
    return write_tiny_recipe(tmp_path, tiny_model)


def run_cli(args, env_extra=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def losses(out_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "loss" in r and "train_runtime" not in r]


def test_one_process_cli_run_writes_everything(recipe, tmp_path):
    res = run_cli([sys.executable, "train/sft.py", "--config", str(recipe), "train.max_steps=6", "train.save_steps=3"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "allocator: THP_MEM_ALLOC_ENABLE=1" in res.stdout  # a CPU run: huge pages, never the CUDA setting
    assert "PYTORCH_CUDA_ALLOC_CONF" not in res.stdout and "CUDA_VISIBLE_DEVICES" not in res.stdout
    out = tmp_path / "out"
    for name in ["adapter_model.safetensors", "adapter_config.json", "run_config.yaml", "metrics.jsonl",
                 "loss_curve.png", "README.md", "data_report.json", "data_report.md", "train_results.json",
                 "tokenizer.json"]:
        assert (out / name).exists(), name
    results = json.loads((out / "train_results.json").read_text())
    assert results["world_size"] == 1 and results["steps"] == 6
    steps = losses(out)
    assert len(steps) == 6 and steps[-1] < steps[0]  # it learns
    logged = [r for r in read_metrics(out / "metrics.jsonl") if "tokens_per_s" in r]
    assert logged and all(r["tokens_per_s"] > 0 and 0 <= r["padding_fraction"] < 1 for r in logged)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert str(recipe) in card and "LoRA" in card and "packing" in card
    assert load_config(out / "run_config.yaml").train.max_steps == 6  # the resolved config, overrides applied

    # the same command again resumes from checkpoint-6, the final step: nothing to train, and the record is kept
    before = {name: (out / name).read_bytes() for name in ("train_results.json", "README.md", "metrics.jsonl")}
    again = run_cli([sys.executable, "train/sft.py", "--config", str(recipe), "train.max_steps=6", "train.save_steps=3"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds the finished run (step 6)" in again.stdout
    assert {name: (out / name).read_bytes() for name in before} == before


def test_two_process_ddp_losses_equal_one_process(recipe, tmp_path):
    """Global batch 4: one process with 4 rows per step vs two processes with 2 each; same rows, same losses."""
    evals = ["data.validation_split=0.2", "train.eval_steps=2"]  # evaluation is collective: every rank must join
    single = run_cli([sys.executable, "train/sft.py", "--config", str(recipe), "train.per_device_batch_size=4",
                      f"output_dir={tmp_path / 'single'}", *evals])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_ddp.yaml",
                   "train/sft.py", "--config", str(recipe), "train.per_device_batch_size=2",
                   f"output_dir={tmp_path / 'ddp'}", *evals], env_extra={"ACCELERATE_USE_CPU": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    log = ddp.stdout + ddp.stderr
    assert "[rank 0] world_size=2" in log and "[rank 1] world_size=2" in log
    assert json.loads((tmp_path / "ddp" / "train_results.json").read_text())["world_size"] == 2
    one, two = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, abs=1e-5), (one, two)
    eval_one = json.loads((tmp_path / "single" / "train_results.json").read_text())["eval_loss"]
    eval_two = json.loads((tmp_path / "ddp" / "train_results.json").read_text())["eval_loss"]
    assert eval_one == pytest.approx(eval_two, abs=1e-4)


def _long_tailed_conversations(path: Path, n: int = 48) -> Path:
    """Replies from 1 to about 120 words, in a shuffled order: random micro-batches differ a lot in tokens."""
    rng = random.Random(0)
    words = "주가 상승 하락 실적 발표 금리 환율 수출 반도체 배터리 계약 인수 합병 공시 배당 the market rose fell".split()
    lengths = [max(1, int(120 * (i / n) ** 3)) for i in range(n)]
    rng.shuffle(lengths)
    with path.open("w", encoding="utf-8") as f:
        for i, k in enumerate(lengths):
            reply = " ".join(rng.choice(words) for _ in range(k))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"질문 {i}: 요약해 주세요."},
                                             {"role": "assistant", "content": reply}]}, ensure_ascii=False) + "\n")
    return path


def test_balanced_sampler_evens_out_tokens_across_ranks(recipe, tmp_path):
    """Unpacked rows of 20 to about 400 tokens, 2 ranks x 2 micro-batches x 4 rows per step. The trainer measures, every optimizer step,
    the real tokens of the busiest and of the idlest rank (one all-reduce) and logs rank_token_imbalance = busiest /
    idlest - 1 over the logging window. The balanced sampler (default) keeps it small; the random sampler on the same
    data does not."""
    data = _long_tailed_conversations(tmp_path / "long_tailed.jsonl")
    common = ["train.per_device_batch_size=4", "train.gradient_accumulation_steps=2", "train.max_steps=6", "data.packing=false", "data.max_length=512",
              f"data.sources=[{{path: {data}, format: messages}}]"]
    imbalance = {}
    for sampler in ("balanced", "random"):
        res = run_cli([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       "configs/accelerate/cpu_ddp.yaml", "train/sft.py", "--config", str(recipe), *common,
                       f"train.sampler={sampler}", f"output_dir={tmp_path / sampler}"],
                      env_extra={"ACCELERATE_USE_CPU": "1"})
        assert res.returncode == 0, res.stderr[-3000:]
        rows = [r for r in read_metrics(tmp_path / sampler / "metrics.jsonl") if "rank_token_imbalance" in r]
        assert len(rows) == 6, rows  # logging_steps=1: one measurement per step
        imbalance[sampler] = max(r["rank_token_imbalance"] for r in rows)
    assert imbalance["balanced"] < 0.25, imbalance
    assert imbalance["random"] > 2 * imbalance["balanced"] + 0.25, imbalance


def test_gradient_accumulation_loss_equals_large_batch_loss(recipe, tmp_path):
    """Rows differ in label-token counts; the loss of 2 micro-batches x 2 rows must equal one batch of 4 rows, which
    holds only when the accumulated loss is normalised by the label tokens of the whole optimizer step."""
    from train.sft import train_sft

    big = load_config(recipe, ["train.per_device_batch_size=4", f"output_dir={tmp_path / 'big'}", "method=full"])
    acc = load_config(recipe, ["train.per_device_batch_size=2", "train.gradient_accumulation_steps=2",
                               f"output_dir={tmp_path / 'acc'}", "method=full"])
    trainer_big = train_sft(big)[0]
    trainer_acc = train_sft(acc)[0]
    one, two = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, abs=1e-5), (one, two)
    for (name, a), (_, b) in zip(trainer_big.model.named_parameters(), trainer_acc.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), name  # same updates, not only the same logged numbers


def _logits(model, input_ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_reloads_and_merges_to_trained_logits(recipe, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from train.model import load_base_model
    from train.sft import train_sft

    cfg = load_config(recipe, [f"method={method}", "qlora.compute_dtype=float32", "save.merged=true",
                               "lora.target_modules=[all-linear]"])
    trainer, tokenizer, _, result = train_sft(cfg)
    ids = torch.tensor([tokenizer("한국의 수도는 서울입니다. The cat is on the mat.")["input_ids"]])
    trained = _logits(trainer.model, ids)
    out = Path(cfg.output_dir)

    reloaded = PeftModel.from_pretrained(load_base_model(cfg), str(out))
    assert torch.allclose(_logits(reloaded, ids), trained, atol=1e-5)
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapter really learned something

    with reloaded.disable_adapter():  # the adapter changed the model
        assert not torch.allclose(_logits(reloaded, ids), trained, atol=1e-3)
    if method == "qlora":
        # the trained forward used dequantised 4-bit weights: merge onto exactly those
        base = load_base_model(cfg).dequantize()
        merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
        assert torch.allclose(_logits(merged, ids), trained, atol=1e-4)
    else:
        merged = AutoModelForCausalLM.from_pretrained(out / "merged")  # written by save.merged=true
        assert torch.allclose(_logits(merged, ids), trained, atol=1e-4)


def test_qlora_gradients_are_the_same_after_an_evaluation_call(recipe):
    """On a CPU with AVX512-BF16 (this machine has it) bitsandbytes would repack a 4-bit layer on its first eval-mode
    call and compute it in bf16 from then on, training included; train/model.py keeps it on the compute dtype, so an
    evaluation between two steps leaves the loss and every gradient bit-identical."""
    from train.model import apply_lora, load_base_model

    cfg = load_config(recipe, ["method=qlora", "qlora.compute_dtype=float32", "lora.dropout=0.0"])
    model = apply_lora(load_base_model(cfg), cfg)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)  # non-zero: every LoRA gradient flows
    ids = torch.randint(0, model.config.vocab_size, (2, 24))

    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss_before, grads_before = step()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    loss_after, grads_after = step()
    assert torch.equal(loss_before, loss_after) and grads_before.keys() == grads_after.keys()
    assert all(torch.equal(grads_before[n], grads_after[n]) for n in grads_before)


def test_full_fine_tuning_saves_loadable_weights(recipe, tmp_path):
    from transformers import AutoModelForCausalLM

    from train.sft import train_sft

    cfg = load_config(recipe, ["method=full", "train.learning_rate=1e-3"])
    trainer, tokenizer, _, _ = train_sft(cfg)
    ids = torch.tensor([tokenizer("서울 The cat")["input_ids"]])
    saved = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    assert (Path(cfg.output_dir) / "model.safetensors").exists()
    assert torch.allclose(_logits(saved, ids), _logits(trainer.model, ids), atol=1e-5)


def test_wandb_offline_run_records_metrics_without_secrets(recipe, tmp_path):
    secret = "wandb_v1_secretkeythatmustnotleak0123456789"
    res = run_cli([sys.executable, "train/sft.py", "--config", str(recipe), "tracking.wandb_mode=offline",
                   "tracking.project=test-offline"], env_extra={"WANDB_API_KEY": secret, "HF_TOKEN": "hf_" + "x" * 30})
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)
    for f in out.rglob("*"):
        if f.is_file() and f.stat().st_size < 20_000_000:
            data = f.read_bytes()
            assert secret.encode() not in data and b"hf_" + b"x" * 30 not in data, f


def test_a_process_in_a_process_group_leaves_with_its_exit_code_after_the_exit_handlers(tmp_path):
    """train/errors.py leave(): without a process group it returns the code; with one (a world of one over gloo here) the
    process ends at once with that code, after the atexit handlers and with stdout flushed, and without the
    interpreter teardown (where a gloo thread that wants the GIL aborts the process)."""
    script = f"""
import atexit, sys
sys.path.insert(0, {str(REPO)!r})
import torch.distributed as dist
from train.errors import leave
assert leave(3) == 3  # no process group: an ordinary return
dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=0, world_size=1)
atexit.register(lambda: open("{tmp_path}/atexit", "w").write("ran"))
class Teardown:  # writes its file during an interpreter teardown (open is bound now: builtins go first there)
    def __del__(self, open=open):
        open("{tmp_path}/teardown", "w").write("ran")
kept = Teardown()
print("trained", end="")  # still in the buffer of a piped stdout
leave(75, wait_for_peers=True)
print(" and came back")
"""
    res = run_cli([sys.executable, "-c", script])
    assert res.returncode == 75, res.stderr[-2000:]
    assert res.stdout == "trained"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()


def test_user_errors_exit_2_with_message_and_no_traceback(recipe, tmp_path):
    res = run_cli([sys.executable, "train/sft.py", "--config", str(recipe), "train.max_step=3"])
    assert res.returncode == 2 and "train.max_steps" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "안녕"}]}\n', encoding="utf-8")
    res = run_cli([sys.executable, "train/sft.py", "--config", str(recipe), f"data.sources.0.path={bad}"])
    assert res.returncode == 2 and "bad.jsonl:1" in res.stderr and "Traceback" not in res.stderr
