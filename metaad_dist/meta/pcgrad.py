"""PCGrad: gradient surgery between conflicting objectives (Yu et al., "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020), used between the inner (normal-only) gradient and each
meta family's outer gradient on the head (docs/method.md section 5).

Why: one family's shots can pull the head in a direction that undoes what the inner loop
taught it about normal rows; projecting that family's gradient onto the normal plane of the
inner gradient keeps the part that separates the family without the part that fights it.
"""
from __future__ import annotations

import torch


def project_conflicting(grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`grad` minus its component along `reference` when the two conflict (negative dot product)."""
    dot = torch.dot(grad, reference)
    norm2 = torch.dot(reference, reference)
    if dot >= 0 or norm2 == 0:
        return grad
    return grad - (dot / norm2) * reference


def flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """d loss / d params as one flat vector; parameters the loss does not reach give zeros."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def assign_flat_grad(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
