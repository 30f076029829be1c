"""The trainer's label-only loss equals the plain full-logits loss, in value and gradients (fp32, 1e-5)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from train.data.packing import Collator, packed_rows
from train.trainer import label_only_loss


def rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for n_prompt, n_answer in [(7, 3), (12, 5), (4, 9), (9, 2), (6, 6)]:
        ids = torch.randint(3, 100, (n_prompt + n_answer,), generator=g).tolist()
        samples.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    return packed_rows(samples, [[0, 1], [2, 3, 4]])


@pytest.mark.parametrize("packing", [True, False])
def test_label_only_loss_and_grads_equal_plain_loss(packing):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
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


def test_gradient_checkpointing_recomputes_layers_and_keeps_loss_and_grads():
    """train.gradient_checkpointing (activation checkpointing, non-reentrant, as training_arguments sets it) with the
    label-only loss on packed rows: every decoder layer runs again in the backward pass, and the loss and gradients
    are those without checkpointing."""
    from train.packed_attention import PACKED_SDPA, register

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
