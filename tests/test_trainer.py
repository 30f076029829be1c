"""The trainer's label-only loss (LinearCrossEntropy, or the model's label logits with SummedCrossEntropy) equals the
plain full-logits loss, in value and gradients (fp32, 1e-5); gradient checkpointing recomputes and changes nothing."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from train.data.packing import Collator, packed_rows
from train.kernels.fused_loss import LinearCrossEntropy, fusable_output_layer, label_only_loss


def samples(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n_prompt, n_answer in [(7, 3), (12, 5), (4, 9), (9, 2), (6, 6)]:
        ids = torch.randint(3, 100, (n_prompt + n_answer,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    return out


def rows(seed=0):
    return packed_rows(samples(seed), [[0, 1], [2, 3, 4]])


@pytest.mark.parametrize("fused", [True, False])  # LinearCrossEntropy, or the model's logits + SummedCrossEntropy
@pytest.mark.parametrize("packing", [True, False])
def test_label_only_loss_and_grads_equal_plain_loss(packing, fused):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if not fused:  # a key that makes the trainer keep the model's own logits (Llama itself ignores it)
        config.final_logit_softcapping = 30.0
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    data = rows() if packing else [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows()]
    batch = Collator(pad_token_id=0, packing=packing)(data)
    n_items = int((batch["labels"][:, 1:] != -100).sum())

    plain = model(**batch, num_items_in_batch=torch.tensor(n_items), use_cache=False).loss  # no cache: packed
    plain.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    ours = label_only_loss(model, batch, torch.tensor(n_items))
    ours.backward()
    assert ours.item() == pytest.approx(plain.item(), abs=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, plain_grads[name], atol=1e-5), name

    # the output layer really saw only the label positions
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    label_only_loss(model, batch, n_items)
    hook.remove()
    assert seen[0][0] == n_items < batch["input_ids"].numel()


def test_fused_loss_in_small_chunks_under_gradient_accumulation_equals_the_large_batch_loss(monkeypatch):
    """Two micro-batches, each normalised by the label tokens of both (as the Trainer does), with logits computed 3
    rows at a time (several chunks and a ragged last one): the accumulated gradients equal those of the plain mean
    cross-entropy over the whole batch at once, in fp32 to 1e-5."""
    monkeypatch.setattr(LinearCrossEntropy, "ROWS", 3)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").train()
    assert fusable_output_layer(model) is model.lm_head
    data = samples()
    full = Collator(pad_token_id=0, packing=False)(data)
    n_items = int((full["labels"][:, 1:] != -100).sum())
    logits = model(input_ids=full["input_ids"], attention_mask=full["attention_mask"], use_cache=False).logits
    targets = full["labels"][:, 1:]
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 100), targets.reshape(-1), ignore_index=-100)
    plain.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    total = 0.0
    for part in (data[:2], data[2:]):
        micro = label_only_loss(model, Collator(pad_token_id=0, packing=False)(part), torch.tensor(n_items))
        micro.backward()
        total += micro.item()
    assert total == pytest.approx(plain.item(), abs=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, plain_grads[name], atol=1e-5), name


def test_gradient_checkpointing_recomputes_layers_and_keeps_loss_and_grads():
    """train.gradient_checkpointing (activation checkpointing, non-reentrant, as training_arguments sets it) with the
    label-only loss on packed rows: every decoder layer runs again in the backward pass, and the loss and gradients
    are those without checkpointing."""
    from train.kernels.packed_attention import PACKED_SDPA, register

    register()
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    batch = Collator(pad_token_id=0, packing=True)(rows())
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=PACKED_SDPA)
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        calls = []
        model.model.layers[0].self_attn.register_forward_hook(lambda m, i, o: calls.append(1))  # inside the checkpoint
        loss = label_only_loss(model, batch, n_items)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)))
    (plain_loss, plain_grads, plain_calls), (gc_loss, gc_grads, gc_calls) = results
    assert (plain_calls, gc_calls) == (1, 2)  # recomputed in the backward pass
    assert gc_loss == pytest.approx(plain_loss, abs=1e-6)
    for name, grad in plain_grads.items():
        assert torch.allclose(gc_grads[name], grad, atol=1e-6), name


@pytest.mark.parametrize("rows", [0, 1, 300, 700])  # none, one, and more than one chunk of SummedCrossEntropy.ROWS
def test_summed_cross_entropy_equals_torch_cross_entropy(rows):
    from train.kernels.fused_loss import SummedCrossEntropy

    g = torch.Generator().manual_seed(rows)
    logits = (4 * torch.randn(rows, 50, generator=g)).requires_grad_()
    targets = torch.randint(0, 50, (rows,), generator=g)
    weights = torch.randn(rows, 50, generator=g)
    plain = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (plain_grad,) = torch.autograd.grad(plain * 0.37, logits)
    ours = SummedCrossEntropy.apply(logits * 1.0, targets)  # an intermediate tensor, as the model's logits are
    (ours_grad,) = torch.autograd.grad(ours * 0.37, logits)
    assert ours.item() == pytest.approx(plain.item(), abs=1e-4 * max(rows, 1))
    assert torch.allclose(ours_grad, plain_grad, atol=1e-6)
    # the logits also feed an op that saved them (and whose backward runs later): autograd refuses the overwritten
    # tensor instead of computing a wrong gradient
    if rows:
        shared = logits * 1.0
        other = (shared.sin() * weights).sum()  # sin saves its input
        with pytest.raises(RuntimeError, match="inplace"):
            (other + SummedCrossEntropy.apply(shared, targets)).backward()


def test_fused_output_layer_only_where_the_model_uses_its_logits_as_they_are():
    from peft import LoraConfig, get_peft_model

    from train.kernels.fused_loss import fusable_output_layer

    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config)
    assert fusable_output_layer(model) is model.lm_head
    lora = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    assert fusable_output_layer(lora) is model.lm_head  # all-linear leaves the output layer alone
    model.config.final_logit_softcapping = 30.0  # e.g. Gemma-2: the logits change after the output layer
    assert fusable_output_layer(model) is None

    # an instance-level forward on the output layer (accelerate's hooks set one) is put back after the fused pass
    model.config.final_logit_softcapping = None
    plain_forward = model.lm_head.forward
    model.lm_head.forward = lambda x: plain_forward(x)
    own = model.lm_head.forward
    assert fusable_output_layer(model) is model.lm_head  # so the pass below takes the fused path
    label_only_loss(model, Collator(pad_token_id=0, packing=True)(rows()), torch.tensor(5)).backward()
    assert model.lm_head.__dict__["forward"] is own


def test_fused_loss_in_bf16_trains_the_output_layer_within_bf16_tolerance(monkeypatch):
    """Full fine-tuning in bf16 (the GPU path): the output layer's weight gradient is computed in the backward, a
    vocabulary slice at a time, as one bf16 product over all label rows (no fp32 weight-sized buffer). Loss and every
    gradient are as close to the fp32 computation on the same weights as plain bf16 autograd's are."""
    calls = []
    real = LinearCrossEntropy.weight_gradient
    monkeypatch.setattr(LinearCrossEntropy, "weight_gradient", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(LinearCrossEntropy, "CHUNK_BYTES", 4 * 40 * 128)  # 128-column slices: several
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").train()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").train()
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()})
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})  # the same (bf16) values
    batch = Collator(pad_token_id=0, packing=True)(rows())
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))

    def grads(m, loss):
        loss.backward()
        assert m.lm_head.weight.grad.dtype == m.lm_head.weight.dtype  # no fp32 copy handed to a bf16 weight
        out = {n: p.grad.float().clone() for n, p in m.named_parameters()}
        m.zero_grad()
        return loss.item(), out

    exact_loss, exact = grads(reference, reference(**batch, num_items_in_batch=n_items, use_cache=False).loss)
    plain_loss, plain = grads(model, model(**batch, num_items_in_batch=n_items, use_cache=False).loss)
    ours_loss, ours = grads(model, label_only_loss(model, batch, n_items))
    assert calls == [1]  # the weight gradient came from the vocabulary slices
    assert abs(ours_loss - exact_loss) <= max(2 * abs(plain_loss - exact_loss), 2e-2)

    def error(g, name):
        return ((g[name] - exact[name]).norm() / exact[name].norm()).item()

    for name in exact:
        assert error(ours, name) <= max(2 * error(plain, name), 2e-2), (name, error(ours, name), error(plain, name))
