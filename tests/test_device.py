"""Device decisions made before torch touches a device (train/device.py), tested on the CPU: one process sees one GPU,
the allocator settings per device, where evaluation loads its model; and the two guards for a process that still sees
several GPUs: the Trainer never wraps the model in nn.DataParallel (n_gpu stays 1), and the forwards this project
binds to module instances follow nn.DataParallel's replicas (train/kernels/instance_forward.py)."""

from __future__ import annotations

import pytest
import torch

from train import device as D

# ----------------------------------------------------------------------------------------------------------------------
# One process, one GPU
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env,expected", [
    ({}, "0"),  # plain `python train/sft.py` on an 8-GPU node: GPU 0 only
    ({"LOCAL_RANK": "0", "ACCELERATE_MIXED_PRECISION": "bf16"}, "0"),  # accelerate launch single_gpu.yaml
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, "3"),  # the first of those the user allowed
    ({"CUDA_VISIBLE_DEVICES": "3, 5", "LOCAL_RANK": "1"}, "5"),
    ({"CUDA_VISIBLE_DEVICES": "GPU-8a1c,GPU-77f0"}, "GPU-8a1c"),  # UUIDs are entries as well
    ({"CUDA_VISIBLE_DEVICES": "2"}, None),  # already one
    ({"WORLD_SIZE": "8", "LOCAL_RANK": "3"}, None),  # several processes: the launcher pins each
    ({"ACCELERATE_USE_CPU": "1"}, None),
])
def test_one_process_sees_only_its_gpu(env, expected):
    assert D.one_process_visible_devices(env) == expected


def test_pinning_happens_only_where_there_are_gpus():
    env = {}
    assert D.pin_one_process_gpu(env, probe=True) == "0" and env == {"CUDA_VISIBLE_DEVICES": "0"}
    env = {}
    assert D.pin_one_process_gpu(env, probe=False) is None and env == {}  # a CPU machine: nothing set
    env = {"CUDA_VISIBLE_DEVICES": ""}
    assert D.pin_one_process_gpu(env, probe=True) is None and env == {"CUDA_VISIBLE_DEVICES": ""}


def test_allocator_settings_per_device_and_the_users_win():
    env = {}
    line = D.set_allocator_defaults(env, probe=True)
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert "expandable_segments:True" in line and "default for a GPU run" in line
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    assert "set by the user" in D.set_allocator_defaults(env, probe=True)
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    env = {"PYTORCH_ALLOC_CONF": "expandable_segments:False"}  # PyTorch's newer name counts as the user's too
    D.set_allocator_defaults(env, probe=True)
    assert "PYTORCH_CUDA_ALLOC_CONF" not in env
    env = {}
    assert "THP_MEM_ALLOC_ENABLE=1" in D.set_allocator_defaults(env, probe=False)
    assert env == {"THP_MEM_ALLOC_ENABLE": "1"}  # huge pages: CPU runs only
    env = {"THP_MEM_ALLOC_ENABLE": "0"}
    assert "set by the user" in D.set_allocator_defaults(env, probe=False) and env == {"THP_MEM_ALLOC_ENABLE": "0"}
    env = {"CUDA_VISIBLE_DEVICES": "-1"}  # GPUs hidden: a CPU run
    D.set_allocator_defaults(env, probe=True)
    assert env.get("THP_MEM_ALLOC_ENABLE") == "1" and "PYTORCH_CUDA_ALLOC_CONF" not in env


def test_evaluation_loads_on_the_local_gpu_when_there_is_one():
    assert D.eval_device_map(True, 0) == {"": 0}
    assert D.eval_device_map(True, 3) == {"": 3}
    assert D.eval_device_map(False, 0) is None  # the CPU


# ----------------------------------------------------------------------------------------------------------------------
# n_gpu stays 1: no nn.DataParallel, no multiplied batch
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_uses_one_gpu_per_process_even_when_transformers_counts_eight(tmp_path):
    """On an 8-GPU node transformers sets n_gpu = 8 for a lone process (all GPUs visible): the Trainer would wrap the
    model in nn.DataParallel and feed it 8 x per_device_batch_size rows. Simulated here by setting what transformers
    sets; the trainer keeps n_gpu at 1, so the model stays unwrapped and a batch holds per_device_batch_size rows."""
    from launch.assets import tiny_model_dir
    from tests.tiny_model import write_tiny_recipe
    from train.config import load_config
    from train.data.packing import Collator
    from train.data.prepare import load_or_build
    from train.data.templates import setup_tokenizer
    from train.model import load_model, load_tokenizer
    from train.trainer import SFTTrainer, training_arguments

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "model"))
    cfg = load_config(recipe, ["data.packing=false", "train.per_device_batch_size=2"])
    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    data = load_or_build(cfg, tokenizer, is_main=True)
    args = training_arguments(cfg)
    args._n_gpu = 8  # what TrainingArguments._setup_devices sets on an 8-GPU node for a lone process
    assert args.train_batch_size == 16
    trainer = SFTTrainer(model=load_model(cfg, tokenizer), args=args, train_dataset=data.train,
                         data_collator=Collator(pad_token_id=tokenizer.pad_token_id, packing=False),
                         processing_class=tokenizer, pad_token_id=tokenizer.pad_token_id)
    assert trainer.args.n_gpu == 1 and trainer.args.train_batch_size == 2
    first = next(iter(trainer.get_train_dataloader()))
    assert first["input_ids"].shape[0] == 2
    assert not isinstance(trainer._wrap_model(trainer.model), torch.nn.DataParallel)


# ----------------------------------------------------------------------------------------------------------------------
# Patched forwards follow nn.DataParallel's replicas
# ----------------------------------------------------------------------------------------------------------------------


def replicate_on_one_device(network: torch.nn.Module) -> torch.nn.Module:
    """torch.nn.parallel.replicate's module handling for one replica, with each parameter replaced by a copy times 2
    (replicate itself broadcasts to CUDA devices only): every module replicated with _replicate_for_data_parallel,
    children and parameters re-pointed to the replicas' own."""
    modules = list(network.modules())
    index = {m: i for i, m in enumerate(modules)}
    replicas = [m._replicate_for_data_parallel() for m in modules]
    for module, replica in zip(modules, replicas):
        for name, child in module._modules.items():
            replica._modules[name] = None if child is None else replicas[index[child]]
        for name, param in module._parameters.items():
            replica._parameters[name] = None if param is None else \
                (param.detach() * 2).requires_grad_(param.requires_grad)
    return replicas[0]


def test_patched_forwards_are_bound_to_each_replica(tiny_causal_lm):
    """The gated MLP's recomputing forward and LoRA's in-place forward are bound to module instances. A replica made
    by nn.DataParallel must run its own weights: with the forward bound to the original module it would run the
    original's (on a multi-GPU node: cuda:0 weights on cuda:1 inputs)."""
    from peft import LoraConfig, get_peft_model

    from train.kernels.instance_forward import has_own_forward
    from train.kernels.lean_lora import lean_lora_layers
    from train.kernels.recompute import recompute_activations

    model = tiny_causal_lm("llama").train()
    assert recompute_activations(model)["gated_mlp"] == 2
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    assert lean_lora_layers(model) > 0
    patched = [m for m in model.modules() if has_own_forward(m)]
    assert {type(m).__name__ for m in patched} >= {"LlamaMLP", "Linear"}

    replica = replicate_on_one_device(model)
    replicated = [m for m in replica.modules() if has_own_forward(m)]
    assert len(replicated) == len(patched)
    assert all(m.forward.__self__ is m for m in replicated)  # bound to the replica, not the original

    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        mlp, mlp_replica = model.base_model.model.model.layers[0].mlp, replica.base_model.model.model.layers[0].mlp
        x = torch.randn(1, 5, 64)
        doubled = mlp_replica.down_proj(mlp_replica.act_fn(mlp_replica.gate_proj(x)) * mlp_replica.up_proj(x))
        assert torch.allclose(mlp_replica(x), doubled, atol=1e-5)  # the replica's own (doubled) weights
        assert not torch.allclose(mlp_replica(x), mlp(x), atol=1e-3)
        assert not torch.allclose(replica(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-3)
