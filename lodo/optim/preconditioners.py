"""LODO's learnable preconditioners, as ``nn.Module``s mapping a batch of vectors v (…, n) to P(θ)·v.

The optimizer multiplies by α₀, so ``G(θ) = α₀·P(θ)``. Each module's parameters are the meta-learned θ.

* :class:`KroneckerPreconditioner` — the paper's P = Eᵀ G̃ᵀ G̃ E with G̃ a product of block-diagonal matrices and
  fixed random permutations (SPEC §1, figure ``lodo_architecture.png``). Identity at initialization.
* :class:`DiagonalPreconditioner` — LODO-Diagonal: P = diag(w), w = 1 at init.
* :class:`GlobalPreconditioner` — LODO-Global: P = w·I, one scalar (SPEC §7.1: the scalar the name intends).
* :class:`ResidualPreconditioner` — LODO-Residuals: P = Eᵀ M₁ᵀ⋯M_Lᵀ D M_L⋯M₁ E with M_ℓ = I + diag(w_ℓ) P_ℓ.
"""

from __future__ import annotations

import torch
from torch import nn


def hidden_width(n: int, block_size: int) -> int:
    """h: the smallest multiple of ``block_size`` strictly greater than 2n (SPEC §1; CNN n=94,696 → 189,396)."""
    return 2 * n + block_size - (2 * n) % block_size


def _random_permutations(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perms = torch.stack([torch.randperm(size, generator=generator) for _ in range(count)]) if count else None
    if perms is None:
        empty = torch.empty(0, size, dtype=torch.long)
        return empty, empty
    return perms, torch.argsort(perms, dim=1)


def _pad(v: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(v, (0, width - v.shape[-1]))


def _blocks_times(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Row vectors times blocks, as in the reference (§2.1): out[…, c, o] = Σ_i z[…, c, i] θ[c, i, o]."""
    k = w.shape[-1]
    if z.dim() == 1:  # what ``@`` runs for one vector, without its reshapes (they dominate at small n)
        return torch.bmm(z.view(-1, 1, k), w).view(-1)
    return (z.reshape(*z.shape[:-1], -1, 1, k) @ w).reshape(z.shape)


def _kronecker_forward(v, perms, inverses, blocks, width, activations=None):
    z = _pad(v, width)
    for perm, w in zip(perms, blocks):
        z = z.index_select(-1, perm)
        if activations is not None:
            activations.append(z)
        z = _blocks_times(z, w)
    for inverse, w in zip(reversed(inverses), reversed(blocks)):
        if activations is not None:
            activations.append(z)
        z = _blocks_times(z, w.mT).index_select(-1, inverse)
    return z[..., : v.shape[-1]]


def _outer(a: torch.Tensor, b: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Σ over leading dims of a[…, c, i]·b[…, c, o]: the gradient bmm forms for a (…, 1, k) × (k, k) product."""
    k = shape[-1]
    if a.dim() == 1:
        return a.view(-1, k, 1) * b.view(-1, 1, k)
    return (a.reshape(*a.shape[:-1], -1, k, 1) * b.reshape(*b.shape[:-1], -1, 1, k)).sum_to_size(shape)


class _KroneckerProduct(torch.autograd.Function):
    """The Kronecker P(θ)·v for the whole stack as one autograd node, with a hand-written backward.

    It makes the same tensor operations autograd makes for the layer-by-layer graph (a block product by ``@`` with
    the same operands and layouts, the weight gradient as the product z_i·g_o that ``bmm`` forms with a contraction
    of length 1, the two uses of each θ⁽ℓ⁾ summed), so values are bitwise those of plain autograd, but it records
    one node instead of 3 per layer and gathers with ``index_select`` in both directions.
    """

    @staticmethod
    def forward(ctx, v, perms, inverses, width, *blocks):
        activations = []
        out = _kronecker_forward(v, perms, inverses, blocks, width, activations)
        ctx.perms, ctx.inverses, ctx.width, ctx.activations = perms, inverses, width, activations
        ctx.save_for_backward(*blocks)
        return out

    @staticmethod
    def backward(ctx, grad):
        blocks, perms, inverses, activations = ctx.saved_tensors, ctx.perms, ctx.inverses, ctx.activations
        depth = len(blocks)
        g = _pad(grad, ctx.width)
        transposed_grads = []
        for layer in range(depth):  # the transposed half, undone from the output side
            g = g.index_select(-1, perms[layer])
            z = activations[2 * depth - 1 - layer]
            transposed_grads.append(_outer(g, z, blocks[layer].shape))
            g = _blocks_times(g, blocks[layer])
        weight_grads = [None] * depth
        for layer in reversed(range(depth)):
            z = activations[layer]
            weight_grads[layer] = _outer(z, g, blocks[layer].shape).add_(transposed_grads[layer])
            g = _blocks_times(g, blocks[layer].mT).index_select(-1, inverses[layer])
        ctx.activations = None
        input_grad = g[..., : grad.shape[-1]] if ctx.needs_input_grad[0] else None
        return input_grad, None, None, None, *weight_grads


class KroneckerPreconditioner(nn.Module):
    """P(θ) = Eᵀ G̃ᵀ G̃ E, G̃ = B(θ⁽¹⁾)P₁ ⋯ B(θ⁽ᴺ⁾)P_N: the "generalized Kronecker factorization" of SPEC §1.

    Each of the ``depth`` layers holds h/k dense k×k blocks as its own leaf tensor (a slice of one stacked tensor
    would zero-fill the whole stacked gradient on every backward; ENVIRONMENT.md). Blocks start as random orthogonal
    matrices (the V factor of the SVD of a Gaussian matrix), so P(θ₀) = I exactly. Permutations are fixed.
    """

    def __init__(self, n: int, depth: int = 16, block_size: int = 4, generator: torch.Generator | None = None):
        super().__init__()
        self.n, self.depth, self.block_size = n, depth, block_size
        self.width = hidden_width(n, block_size)
        generator = generator or torch.Generator().manual_seed(0)
        perms, inverses = _random_permutations(depth, self.width, generator)
        self.register_buffer("perms", perms)
        self.register_buffer("inverse_perms", inverses)
        blocks = self.width // block_size
        self.blocks = nn.ParameterList()
        for _ in range(depth):
            gaussian = torch.randn(blocks, block_size, block_size, generator=generator, dtype=torch.float64)
            # contiguous: Vh comes column-major, and a gradient must match its parameter's layout or be copied.
            self.blocks.append(nn.Parameter(torch.linalg.svd(gaussian).Vh.contiguous()))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # unbind: a tuple of rows (``reversed`` on the tensor itself would flip, i.e. copy, all permutations).
        perms, inverses, blocks = self.perms.unbind(), self.inverse_perms.unbind(), tuple(self.blocks)
        if v.requires_grad or (torch.is_grad_enabled() and any(w.requires_grad for w in blocks)):
            return _KroneckerProduct.apply(v, perms, inverses, self.width, *blocks)
        return _kronecker_forward(v, perms, inverses, blocks, self.width)


class DiagonalPreconditioner(nn.Module):
    """LODO-Diagonal: P = diag(w), w ∈ ℝⁿ initialized to ones (not constrained to stay positive)."""

    def __init__(self, n: int, generator: torch.Generator | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, dtype=torch.float64))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.weight * v


class GlobalPreconditioner(nn.Module):
    """LODO-Global: P = w·I with one learned scalar w = 1 at init (close to hypergradient descent)."""

    def __init__(self, n: int, generator: torch.Generator | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.weight * v


class ResidualPreconditioner(nn.Module):
    """LODO-Residuals: ``depth`` residual layers z ← z + w_ℓ ⊙ z[π_ℓ], a diagonal d, then the transposed stack.

    h = 2n exactly, w_ℓ ~ N(0, 1/depth) (std 1/8 for the paper's 64 layers), d = 1. Symmetric; PSD only while
    d ≥ 0, and not the identity at initialization (reference §2.2).
    """

    def __init__(self, n: int, depth: int = 64, generator: torch.Generator | None = None):
        super().__init__()
        self.n, self.depth, self.width = n, depth, 2 * n
        generator = generator or torch.Generator().manual_seed(0)
        perms, inverses = _random_permutations(depth, self.width, generator)
        self.register_buffer("perms", perms)
        self.register_buffer("inverse_perms", inverses)
        std = depth**-0.5 if depth else 0.0
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(self.width, generator=generator, dtype=torch.float64) * std) for _ in range(depth)
        )
        self.diagonal = nn.Parameter(torch.ones(self.width, dtype=torch.float64))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        perms, inverses, weights = self.perms.unbind(), self.inverse_perms.unbind(), tuple(self.weights)
        thetas = (self.diagonal, *weights)
        if v.requires_grad or (torch.is_grad_enabled() and any(t.requires_grad for t in thetas)):
            return _ResidualProduct.apply(v, perms, inverses, self.width, *thetas)
        return _residual_forward(v, perms, inverses, weights, self.diagonal, self.width)


def _residual_forward(v, perms, inverses, weights, diagonal, width, activations=None):
    keep = activations.append if activations is not None else lambda z: None
    z = _pad(v, width)
    for perm, w in zip(perms, weights):
        permuted = z.index_select(-1, perm)
        keep(permuted)
        z = z + w * permuted
    keep(z)
    z = diagonal * z
    for inverse, w in zip(reversed(inverses), reversed(weights)):
        keep(z)
        z = z + (w * z).index_select(-1, inverse)
    return z[..., : v.shape[-1]]


def _sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == like.dim() else t.sum_to_size(like.shape)


class _ResidualProduct(torch.autograd.Function):
    """LODO-Residuals' P(θ)·v as one autograd node; the backward makes autograd's products and sums, bitwise."""

    @staticmethod
    def forward(ctx, v, perms, inverses, width, diagonal, *weights):
        activations = []
        out = _residual_forward(v, perms, inverses, weights, diagonal, width, activations)
        ctx.perms, ctx.inverses, ctx.width, ctx.activations = perms, inverses, width, activations
        ctx.save_for_backward(diagonal, *weights)
        return out

    @staticmethod
    def backward(ctx, grad):
        (diagonal, *weights), activations, depth = ctx.saved_tensors, ctx.activations, len(ctx.perms)
        g = _pad(grad, ctx.width)
        transposed_grads = []
        for layer in range(depth):  # z ← z + (w ⊙ z)[π⁻¹], undone from the output side
            w, z = weights[layer], activations[2 * depth - layer]
            g_product = g.index_select(-1, ctx.perms[layer])
            transposed_grads.append(_sum_to(g_product * z, w))
            g = g + g_product * w
        diagonal_grad = _sum_to(g * activations[depth], diagonal)
        g = g * diagonal
        weight_grads = [None] * depth
        for layer in reversed(range(depth)):  # z ← z + w ⊙ z[π]
            w = weights[layer]
            weight_grads[layer] = _sum_to(g * activations[layer], w).add_(transposed_grads[layer])
            g = g + (g * w).index_select(-1, ctx.inverses[layer])
        ctx.activations = None
        input_grad = g[..., : grad.shape[-1]] if ctx.needs_input_grad[0] else None
        return input_grad, None, None, None, diagonal_grad, *weight_grads
