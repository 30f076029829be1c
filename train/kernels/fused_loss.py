"""The training loss over label positions only, with the output layer fused into the cross-entropy.

In training, the output layer and the cross-entropy run only at positions whose next token carries a label
(`logits_to_keep` as a boolean mask), instead of full-vocabulary fp32 logits for every position. In SFT most tokens
are prompt, so this saves most of the output layer's time and memory. Where the output layer is a plain Linear used
as it is, `LinearCrossEntropy` computes the logits a chunk of rows at a time (no (label tokens, vocab) tensor);
otherwise the model computes the label positions' logits and `SummedCrossEntropy` takes them, holding one such tensor
instead of three. Loss and gradients equal the plain full-logits cross-entropy (tests/test_trainer.py).

Under gradient accumulation the Trainer passes `num_items_in_batch`, the label tokens of all micro-batches of the
optimizer step (summed across data-parallel ranks): the summed token loss divided by it equals the large-batch loss.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from train.data import IGNORE_INDEX


def label_only_loss(model, inputs: Dict[str, torch.Tensor], num_items_in_batch) -> torch.Tensor:
    """Summed cross-entropy over label tokens / num_items_in_batch, computing logits only where a label follows.

    Where the output layer is a plain Linear whose logits the model uses as they are (no soft-capping or scaling, not
    partitioned by ZeRO-3), the model's forward returns the final hidden states at those positions (its output layer
    answers with its input for this one call) and `LinearCrossEntropy` computes the logits a chunk of rows at a time:
    memory holds one chunk of logits, whatever the number of label tokens. Otherwise the model computes the label
    positions' logits and `SummedCrossEntropy` takes them."""
    labels = inputs["labels"]
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]  # position p predicts token p + 1
    keep = targets != IGNORE_INDEX
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    head = fusable_output_layer(model) if torch.is_grad_enabled() else None
    if head is not None:
        with _returns_its_input(head):
            hidden = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits  # (label tokens, hidden)
        loss = LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets[keep])
    else:
        logits = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits  # (label tokens, vocab)
        loss = SummedCrossEntropy.apply(logits.float().reshape(-1, logits.shape[-1]), targets[keep])
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


OUTPUT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                     "lm_head_multiplier")  # config keys of models that change the logits after the output layer


def fusable_output_layer(model) -> Optional[torch.nn.Linear]:
    """The model's output layer when `LinearCrossEntropy` may stand in for it and the loss, else None."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    if type(model).__name__ == "FullyShardedDataParallel":  # FSDP1: weights are sharded outside its forward
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or hasattr(head.weight, "ds_id") or type(head.weight.data) is not torch.Tensor:
        return None  # a LoRA/wrapped head (FSDP2 changes the class too), ZeRO-3-partitioned or a DTensor weight
    config = model.config.get_text_config()
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in OUTPUT_TRANSFORMS):
        return None
    return head


class _returns_its_input:
    """For one forward pass, `head(x)` returns x: the model hands back its final hidden states."""

    def __init__(self, head: torch.nn.Module):
        self.head = head

    def __enter__(self):
        self.own = self.head.__dict__.get("forward")  # e.g. an accelerate hook's forward: put back afterwards
        self.head.forward = lambda x: x  # an instance attribute shadows the class's forward

    def __exit__(self, *exc):
        if self.own is None:
            del self.head.forward
        else:
            self.head.forward = self.own


class LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(hidden @ weight.T + bias, targets, reduction="sum") without the (N, vocab) logits: the forward
    computes the logits a chunk of rows at a time and, as the loss is a plain sum, their gradients at once (softmax -
    one-hot, into the hidden states and the output layer's bias, and for an fp32 weight into an fp32 weight gradient);
    the backward scales them by the incoming gradient. Same value and gradients as the plain computation
    (tests/test_trainer.py), and no more arithmetic.

    A 16-bit output layer that trains (full fine-tuning on a GPU) gets its weight gradient in the backward instead, one
    slice of the vocabulary at a time: the slice's logits are recomputed from the kept hidden states and log-sum-exps,
    and its gradient is one product over all label rows in the compute dtype (tensor cores, fp32 accumulation inside
    the product, rounded once), written straight into a weight-dtype gradient. Summing per-chunk products into an fp32
    weight-sized buffer instead would cost 2.1 GB for the Llama-3 vocabulary and an fp32 GEMM per chunk. The price is
    one more product of the output layer's size (about 2% of an 8B model's step)."""

    ROWS = 128  # rows of logits per chunk (CPU, and the floor on a GPU)
    CHUNK_BYTES = 256 * 1024 ** 2  # on a GPU: rows (forward) / vocabulary columns (backward) per chunk up to this

    @staticmethod
    def rows_per_chunk(device: torch.device, vocab: int) -> int:
        if device.type == "cpu":
            return LinearCrossEntropy.ROWS
        return max(LinearCrossEntropy.ROWS, LinearCrossEntropy.CHUNK_BYTES // (4 * vocab) // 128 * 128)

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        weight_in_backward = weight.requires_grad and weight.dtype in (torch.bfloat16, torch.float16)
        weight_grad = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if weight.requires_grad and not weight_in_backward else None
        bias_grad = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if bias is not None and bias.requires_grad else None
        hidden_grad = torch.empty_like(hidden)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device) if weight_in_backward else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        step = LinearCrossEntropy.rows_per_chunk(hidden.device, weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            rows = slice(start, start + step)
            h, t = hidden[rows], targets[rows]
            logits = torch.nn.functional.linear(h, weight, bias).float()
            # log-sum-exp and softmax in place (torch.logsumexp would allocate a second chunk-sized tensor)
            top = logits.amax(dim=-1, keepdim=True)
            picked = logits.gather(1, t[:, None])
            total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)
            loss += (total.log() - (picked - top)).sum()
            if lse is not None:
                lse[rows] = (top + total.log()).squeeze(1)
            grad = logits.div_(total)  # softmax
            grad[torch.arange(len(t), device=t.device), t] -= 1
            hidden_grad[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if weight_grad is not None:
                weight_grad.addmm_(grad.t(), h.float())
            if bias_grad is not None:
                bias_grad += grad.sum(0)
            del logits, grad  # before the next chunk's logits exist: one chunk at a time, not two
        # Kept as attributes, not saved tensors, and dropped in the backward: the engine then holds the only reference
        # to the weight's gradient and the parameter adopts it (a saved tensor would make it copy a weight-sized one).
        ctx.grads = (hidden_grad, weight_grad, bias_grad)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.weight_in_backward = weight_in_backward
        if weight_in_backward:
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
        return loss

    @staticmethod
    def backward(ctx, grad):
        hidden_grad, weight_grad, bias_grad = ctx.grads  # scaled in place: no second weight-sized tensor
        del ctx.grads
        weight_dtype, bias_dtype = ctx.dtypes
        if ctx.weight_in_backward:
            weight_grad = LinearCrossEntropy.weight_gradient(*ctx.saved_tensors, grad)
        else:
            weight_grad = None if weight_grad is None else weight_grad.mul_(grad).to(weight_dtype)
        return (hidden_grad.mul_(grad.to(hidden_grad.dtype)), weight_grad,
                None if bias_grad is None else bias_grad.mul_(grad).to(bias_dtype), None)

    @staticmethod
    def weight_gradient(hidden, weight, bias, targets, lse, grad) -> torch.Tensor:
        """d loss / d weight, a vocabulary slice at a time: softmax - one-hot of the slice's recomputed logits, times
        the incoming gradient, then one (slice, N) x (N, hidden) product in the weight's dtype."""
        h = hidden.to(weight.dtype)
        out = torch.empty_like(weight)
        vocab, n = weight.shape[0], hidden.shape[0]
        step = vocab if n == 0 else max(128, min(vocab, LinearCrossEntropy.CHUNK_BYTES // (4 * n) // 128 * 128))
        rows = torch.arange(n, device=hidden.device)
        for start in range(0, vocab, step):
            stop = min(start + step, vocab)
            logits = torch.nn.functional.linear(h, weight[start:stop], None if bias is None else bias[start:stop])
            g = logits.float().sub_(lse[:, None]).exp_()
            inside = (targets >= start) & (targets < stop)
            g[rows[inside], targets[inside] - start] -= 1
            torch.mm(g.mul_(grad).to(weight.dtype).t(), h, out=out[start:stop])
            del logits, g
        return out


class SummedCrossEntropy(torch.autograd.Function):
    """cross_entropy(logits, targets, reduction="sum") for (N, vocab) fp32 logits, holding one (N, vocab) tensor instead
    of three: the forward keeps the logits and a log-sum-exp per row (F.cross_entropy also keeps the log-probabilities),
    and the backward turns the logits into their gradient in place (softmax - one-hot), a chunk of rows at a time.
    The logits must be used by nothing else (the label-only loss owns them; autograd's version check would catch an
    op that saved them). Same value and gradient as F.cross_entropy (tests/test_trainer.py)."""

    ROWS = 64  # rows per chunk: bounds the temporaries of logsumexp to ROWS x vocab

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.cat([torch.logsumexp(chunk, dim=-1) for chunk in logits.split(SummedCrossEntropy.ROWS)]) \
            if logits.shape[0] else logits.new_zeros(0)
        ctx.save_for_backward(logits, targets, lse)
        return (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad_logits = logits  # reused: nothing else needs the logits
        for chunk, chunk_lse in zip(grad_logits.split(SummedCrossEntropy.ROWS), lse.split(SummedCrossEntropy.ROWS)):
            chunk.sub_(chunk_lse[:, None]).exp_()  # softmax
        grad_logits[torch.arange(len(targets), device=targets.device), targets] -= 1
        return grad_logits.mul_(grad), None
