"""train/kernels/recompute.py: gated MLPs keep (gate, up) and recompute act(gate) and the product in backward; RMSNorm
outputs are recomputed from the norm's input; the packed CPU attention's concatenated output is recomputed from its
blocks. Also train/model.py's in-place LoRA update (fewer temporaries, peft's bits).

Each case runs the same batch through a plain model and a patched copy of it: the loss and every gradient must be
bit-identical, and what the forward pass leaves allocated must shrink by exactly the tensors no longer kept (two of
the intermediate width and two of the hidden width per token and layer; with full fine-tuning also the final norm's
output), measured independently of the code: the bytes glibc's malloc holds after the forward pass."""

from __future__ import annotations

import copy
import ctypes
import gc

import pytest
import torch

from launch.assets import tiny_model_dir
from train.kernels.recompute import gated_mlp_forward, recompute_activations, recomputing


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)  # init_lora_weights=False: random A and B, so every LoRA gradient is non-zero
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                            task_type="CAUSAL_LM"))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back (its heaps plus its mmapped chunks); tensors live there."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _step(model, input_ids, labels):
    """Loss, gradients by parameter name, and the bytes the forward pass leaves allocated for the backward pass."""
    model.train()  # transformers rebinds its norms' forward here: what recompute_activations adds must survive it
    model.zero_grad(set_to_none=True)
    gc.collect()
    before = _heap_in_use()
    with recomputing():
        loss = model(input_ids=input_ids, labels=labels).loss
    kept = _heap_in_use() - before
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, kept


@pytest.mark.parametrize("arch,method", [("llama", "full"), ("llama", "lora"), ("qwen3", "lora")])
def test_loss_gradients_identical_and_fewer_tensors_kept(tmp_path, arch, method):
    plain = _load(tiny_model_dir(tmp_path / arch, arch=arch))
    patched = copy.deepcopy(plain)
    layers = plain.config.num_hidden_layers
    norms = 2 * layers + 1 + (2 * layers if arch == "qwen3" else 0)  # + the final norm; Qwen3: q_norm, k_norm
    assert recompute_activations(patched) == {"gated_mlp": layers, "rms_norm": norms}
    if method == "lora":
        plain, patched = _lora(plain), _lora(patched)
    torch.manual_seed(0)
    batch, length = 2, 96
    input_ids = torch.randint(0, plain.config.vocab_size, (batch, length))
    labels = input_ids.clone()
    labels[:, :7] = -100

    _step(plain, input_ids, labels), _step(patched, input_ids, labels)  # warm-up: first-call allocations
    loss_a, grads_a, saved_a = _step(plain, input_ids, labels)
    loss_b, grads_b, saved_b = _step(patched, input_ids, labels)

    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    cfg = plain.config
    # full: the output layer also keeps the final norm's output; LoRA: the first norm's input (the frozen embeddings'
    # output) is kept for the note only, in place of the norm's output
    per_token = cfg.num_hidden_layers * (2 * cfg.intermediate_size + 2 * cfg.hidden_size) \
        + (cfg.hidden_size if method == "full" else -cfg.hidden_size)
    assert saved_a - saved_b == pytest.approx(batch * length * per_token * 4, rel=0.03)


def test_inference_path_and_other_modules_untouched(tmp_path):
    model = _load(tiny_model_dir(tmp_path / "llama"))
    before = {name: type(m).forward for name, m in model.named_modules()}
    reference = copy.deepcopy(model)
    assert recompute_activations(model) == {"gated_mlp": 2, "rms_norm": 5}
    assert recompute_activations(model) == {"gated_mlp": 0, "rms_norm": 0}  # already patched: left alone
    model.train()
    patched = [name for name, m in model.named_modules() if "forward" in vars(m) or hasattr(m, "_recompute_hook")]
    assert patched == [f"model.layers.{i}.{part}" for i in (0, 1) for part in
                       ("mlp", "input_layernorm", "post_attention_layernorm")] + ["model.norm"]
    assert all(type(m).forward is before[name] for name, m in model.named_modules())
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_non_gated_mlp_is_not_patched():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert recompute_activations(model) == {"gated_mlp": 0, "rms_norm": 0}


def test_changed_in_place_or_freed_is_never_recomputed():
    """A registered tensor changed in place before autograd saves it is kept as it is (the recomputation would give
    the old values), and a freed one leaves the registry, so a later tensor at its address cannot be taken for it."""
    from train.kernels import recompute

    x = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    with recomputing():
        out = x * 2
        recompute.register(out, lambda t: t * 2, x)
        out.add_(1)  # in place, before it is saved
        loss = (out * w).sum()  # saves out (for w's gradient)
        gone = x * 3
        recompute.register(gone, lambda t: t * 3, x)
        assert len(recompute._registry) == 2
        del gone
        assert len(recompute._registry) == 1
    loss.backward()
    assert torch.equal(w.grad, (x.detach() * 2 + 1).sum(0))


def test_saved_views_come_back_with_their_geometry():
    """Autograd may save a view of a registered tensor (a reshape, a slice): the note recreates exactly that view."""
    from train.kernels import recompute

    x = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)
    grads = []
    for use_notes in (False, True):
        x.grad = w.grad = None
        with recomputing(enabled=use_notes):
            out = torch.tanh(x)
            recompute.register(out, torch.tanh, x)
            loss = (out[1:5, 2:6].t() @ w).pow(2).sum() + (out.reshape(12, 4) @ w).sum()
        loss.backward()
        grads.append((x.grad.clone(), w.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_load_model_recomputes_only_without_gradient_checkpointing(tmp_path, checkpointing):
    """The real loading path (packed rows on a CPU switch attention to sdpa_packed, then LoRA): every gated MLP and
    RMSNorm gets the recomputing forward unless gradient checkpointing is on."""
    from train.config import Config, DataConfig, LoraSettings, ModelConfig, TrainConfig
    from train.model import load_model, load_tokenizer

    folder = tiny_model_dir(tmp_path / "llama")
    cfg = Config(model=ModelConfig(name_or_path=str(folder), dtype="float32", attn_implementation="sdpa"),
                 method="lora", lora=LoraSettings(r=4, target_modules=["all-linear"], dropout=0.0),
                 data=DataConfig(max_length=64, packing=True),
                 train=TrainConfig(gradient_checkpointing=checkpointing), output_dir=str(tmp_path / "out"))
    model = load_model(cfg, load_tokenizer(cfg))
    model.train()  # as the Trainer does; transformers rebinds its norms' forward here
    ours = [type(m).__name__ for m in model.modules()
            if getattr(vars(m).get("forward"), "__func__", None) is gated_mlp_forward or hasattr(m, "_recompute_hook")]
    assert sorted(ours) == ([] if checkpointing else ["LlamaMLP"] * 2 + ["LlamaRMSNorm"] * 5)


def test_packed_attention_output_is_recomputed_from_the_blocks(tmp_path):
    """"sdpa_packed" (train/kernels/packed_attention.py) concatenates the blocks' outputs for o_proj, which keeps that copy:
    under `recomputing()` it is recomputed from the blocks' outputs SDPA keeps. Loss and gradients bit-identical;
    the forward pass leaves exactly one attention output (hidden width) per token and layer fewer allocated."""
    from train.kernels.packed_attention import PACKED_SDPA, register

    register()
    model = _lora(_load(tiny_model_dir(tmp_path / "llama", hidden=256)))
    model.set_attn_implementation(PACKED_SDPA)
    torch.manual_seed(0)
    lengths = [200, 150, 130]  # three samples packed in each of two rows (large enough that the notes are noise)
    input_ids = torch.randint(0, model.config.vocab_size, (2, sum(lengths)))
    position_ids = torch.cat([torch.arange(n) for n in lengths]).repeat(2, 1)
    results = []
    for notes in (False, True, False, True):  # the first two: warm-up
        model.zero_grad(set_to_none=True)
        gc.collect()
        before = _heap_in_use()
        with recomputing(enabled=notes):
            loss = model(input_ids=input_ids, position_ids=position_ids, labels=input_ids).loss
        kept = _heap_in_use() - before
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
                        kept))
    (loss_a, grads_a, kept_a), (loss_b, grads_b, kept_b) = results[2:]
    assert torch.equal(loss_a, loss_b) and len(grads_a) > 0
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    cfg = model.config
    assert kept_a - kept_b == pytest.approx(input_ids.numel() * cfg.num_hidden_layers * cfg.hidden_size * 4, rel=0.03)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lean_lora_forward_gives_peft_bits(tmp_path, dropout):
    """train/model.py's in-place LoRA update: loss and every gradient bit-identical to peft's own forward (dropout
    included, same random stream); a disabled adapter falls back to peft and gives the base model."""
    from peft import LoraConfig, get_peft_model

    from train.kernels.lean_lora import lean_lora_layers

    base = _load(tiny_model_dir(tmp_path / "llama"))
    models = []
    for lean in (False, True):
        torch.manual_seed(1)
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                                target_modules="all-linear", init_lora_weights=False))
        if lean:
            assert lean_lora_layers(model) == 7 * base.config.num_hidden_layers
        models.append(model)
    torch.manual_seed(0)
    input_ids = torch.randint(0, base.config.vocab_size, (2, 48))
    results = []
    for model in models:
        model.train()
        torch.manual_seed(2)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and len(grads_a) == 14 * base.config.num_hidden_layers
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    lean = models[1].eval()
    with torch.no_grad(), lean.disable_adapter():
        assert torch.equal(lean(input_ids=input_ids).logits, base.eval()(input_ids=input_ids).logits)
