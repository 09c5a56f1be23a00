"""The TopK encoder of training, with a backward pass over the selected latents only.

Forward: ``a = relu(x @ W_enc + b_enc)`` (dense: every latent must be scored to pick the top k),
the ``k`` largest of each row, and, for the AuxK loss, the ``k_aux`` largest among the dead
latents. Autograd through ``topk`` would keep ``a`` and send back a dense ``[batch, d_sae]``
gradient, two more dense matrix products; only ``k + k_aux`` entries of it are non-zero per
row, so here the backward multiplies by that sparse matrix instead:

- ``dW_enc = x^T G`` and ``db_enc = sum_rows G`` (``G``: the gradients at the selected entries,
  zero where ``relu`` clipped the value), computed as a sparse ``[d_sae, batch]`` times ``x``;
- ``dx = G W_enc^T``, an ``embedding_bag`` over the selected columns.

sparsify's ``FusedEncoder`` takes the same shortcut for its top-k latents (and passes no
gradient from AuxK to the encoder); here the AuxK selection is differentiated too, as in the
dense formulation of Gao et al. 2024. ``tests/unit/test_sae.py`` checks the gradients against
autograd through the dense computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _TopKEncoder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k: int, dead: torch.Tensor | None, k_aux: int):
        acts = torch.addmm(b_enc, x, W_enc).relu_()
        values, indices = acts.topk(k, dim=-1, sorted=False)
        aux_values = aux_indices = None
        if k_aux:
            aux_values, aux_indices = acts.masked_fill_(~dead, -torch.inf).topk(k_aux, dim=-1, sorted=False)
        ctx.save_for_backward(x, W_enc, indices, values, aux_indices, aux_values)
        ctx.mark_non_differentiable(indices)
        if aux_indices is None:
            return values, indices, None, None
        ctx.mark_non_differentiable(aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux, _grad_aux_indices):
        x, W_enc, indices, values, aux_indices, aux_values = ctx.saved_tensors
        grads, selected = [grad_values * (values > 0)], [indices]
        if aux_indices is not None and grad_aux is not None:
            grads.append(grad_aux * (aux_values > 0))
            selected.append(aux_indices)
        g = torch.cat(grads, 1) if len(grads) > 1 else grads[0]
        columns = torch.cat(selected, 1) if len(selected) > 1 else selected[0]
        batch, d_sae = x.shape[0], W_enc.shape[1]
        rows = torch.arange(batch, device=x.device).repeat_interleave(columns.shape[1])
        sparse = torch.sparse_coo_tensor(torch.stack([columns.flatten(), rows]), g.flatten(), (d_sae, batch),
                                         check_invariants=False)
        grad_W = torch.sparse.mm(sparse, x).t() if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, columns.flatten(), g.flatten())
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(columns, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        return grad_x, grad_W, grad_b if ctx.needs_input_grad[2] else None, None, None, None


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
                dead: torch.Tensor | None = None, k_aux: int = 0):
    """``(values, indices, aux_values, aux_indices)`` of ``relu(x @ W_enc + b_enc)``: the ``k``
    largest per row and the ``k_aux`` largest among ``dead`` latents (``None`` when ``k_aux`` is 0)."""
    if k_aux and dead is None:
        raise ValueError("topk_encode: k_aux needs the dead-latent mask")
    return _TopKEncoder.apply(x, W_enc, b_enc, k, dead, k_aux)
