"""train/kernels/cpu_heap.py: on a CPU, the heap's free pages go back to the system when the backward pass reaches trained
input embeddings. Measured on a real backward pass: the process's anonymous RSS at the moment the embeddings' gradient
arrives, with and without the hook, and the gradients it lets through."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.peak_memory import anonymous_rss
from launch.assets import tiny_model_dir
from train.kernels.cpu_heap import _LIBC, trim_before_embedding_backward


@pytest.mark.skipif(_LIBC is None, reason="glibc's malloc_trim")
def test_free_heap_is_returned_before_the_embedding_gradient(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path / "m", hidden=256), dtype=torch.float32)
    model.train()
    plain = copy.deepcopy(model)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 512))

    def step(m):
        seen = {}
        m.zero_grad(set_to_none=True)
        out = m.get_input_embeddings()(ids)  # a probe hook after the model's own: the RSS when the gradient arrives
        loss = m(inputs_embeds=out, labels=ids).loss
        out.register_hook(lambda g: seen.update(rss=anonymous_rss()))
        loss.backward()
        return seen["rss"], {n: p.grad.clone() for n, p in m.named_parameters()}

    assert trim_before_embedding_backward(model) and not trim_before_embedding_backward(model)  # once
    frozen = copy.deepcopy(plain)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not trim_before_embedding_backward(frozen)  # nothing to allocate there: left alone

    step(plain), step(model)  # warm-up: glibc's mmap threshold rises to the activations' size
    rss_plain, grads_plain = step(plain)
    rss_trimmed, grads_trimmed = step(model)
    activations = 2 * ids.numel() * model.config.hidden_size * 4 * 8  # a lower bound: 8 hidden-wide tensors a layer
    assert rss_plain - rss_trimmed > activations / 4, (rss_plain, rss_trimmed)
    assert grads_plain.keys() == grads_trimmed.keys()
    assert all(torch.equal(grads_plain[n], grads_trimmed[n]) for n in grads_plain)
