"""LODO's learnable preconditioners, as ``nn.Module``s mapping a batch of vectors v (…, n) to P(θ)·v.

The optimizer multiplies by α₀, so ``G(θ) = α₀·P(θ)``. Each module's parameters are the meta-learned θ.

* :class:`KroneckerPreconditioner` — the paper's P = Eᵀ G̃ᵀ G̃ E with G̃ a product of block-diagonal matrices and
  fixed random permutations (the paper's figure of LODO's architecture). Identity at initialization.
* :class:`DiagonalPreconditioner` — LODO-Diagonal: P = diag(w), w = 1 at init.
* :class:`GlobalPreconditioner` — LODO-Global: P = w·I, one scalar (the scalar the name intends; README,
  *Faithful to the paper*).
* :class:`ResidualPreconditioner` — LODO-Residuals: P = Eᵀ M₁ᵀ⋯M_Lᵀ D M_L⋯M₁ E with M_ℓ = I + diag(w_ℓ) P_ℓ.

The Kronecker and residual modules run either in PyTorch (any device and dtype) or, with ``backend="native"``, through
the C library of :mod:`lodo.optim.native` (CPU, float32/float64; other inputs still take the PyTorch path).
"""

from __future__ import annotations

import torch
from torch import nn

from lodo.optim import native


def hidden_width(n: int, block_size: int) -> int:
    """h: the smallest multiple of ``block_size`` strictly greater than 2n (as in the authors' code; CNN → 189,396)."""
    return 2 * n + block_size - (2 * n) % block_size


def _random_permutations(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perms = torch.stack([torch.randperm(size, generator=generator) for _ in range(count)]) if count else None
    if perms is None:
        empty = torch.empty(0, size, dtype=torch.long)
        return empty, empty
    return perms, torch.argsort(perms, dim=1)


def _pad(v: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(v, (0, width - v.shape[-1]))


def _block_product(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Row vectors times blocks in the storage layout: out[…, o, c] = Σ_i z[…, i, c]·w[i, o, c].

    One multiply-add over all C blocks per block index i: k vectorized passes instead of C tiny matrix products.
    """
    out = z[..., 0:1, :] * w[0]
    for i in range(1, w.shape[0]):
        out = torch.addcmul(out, z[..., i : i + 1, :], w[i])
    return out


def _transposed_block_product(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Row vectors times transposed blocks: out[…, i, c] = Σ_o w[i, o, c]·z[…, o, c]."""
    out = w[:, 0] * z[..., 0:1, :]
    for o in range(1, w.shape[1]):
        out = torch.addcmul(out, w[:, o], z[..., o : o + 1, :])
    return out


def _kronecker_forward(v, gathers, blocks, width, activations=None):
    """P(θ)·v with the layer inputs kept in ``activations`` (2N of them) when a list is given."""
    forward, reverse = gathers[:2]
    k = blocks[0].shape[0] if blocks else 1
    z = _pad(v, width)
    lead = z.shape[:-1]
    for index, w in zip(forward, blocks):
        z = z.reshape(*lead, -1).index_select(-1, index).view(*lead, k, -1)
        if activations is not None:
            activations.append(z)
        z = _block_product(z, w)
    for index, w in zip(reversed(reverse), reversed(blocks)):
        z = z.view(*lead, k, -1)
        if activations is not None:
            activations.append(z)
        z = _transposed_block_product(z, w).view(*lead, -1).index_select(-1, index)
    return z[..., : v.shape[-1]]


def _weight_grad(z: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """A block product's weight gradient: g[…, ·, c]·z[…, j, c] summed over the leading dims, j along ``dim``.

    For one vector, one broadcast product; for a batch, the per-index ``sum_to_size`` that autograd makes.
    """
    if z.dim() == 2:
        return z.unsqueeze(1) * g.unsqueeze(0) if dim == 0 else g.unsqueeze(1) * z.unsqueeze(0)
    return torch.stack([(g * z[..., j : j + 1, :]).sum_to_size(g.shape[-2:]) for j in range(z.shape[-2])], dim)


class _KroneckerProduct(torch.autograd.Function):
    """The Kronecker P(θ)·v for the whole stack as one autograd node, with a hand-written backward.

    The backward makes the tensor operations autograd makes for the layer-by-layer graph of
    :func:`_kronecker_forward` (each product and each ``sum_to_size`` with the same operands and layouts, the two
    uses of each θ⁽ℓ⁾ summed), so values are bitwise those of plain autograd, but it records one node instead of
    ~2k per layer, and undoes each gather with the inverse gather instead of accumulating into zero-filled buffers.
    """

    @staticmethod
    def forward(ctx, v, gathers, width, *blocks):
        activations = []
        out = _kronecker_forward(v, gathers, blocks, width, activations)
        ctx.gathers, ctx.width, ctx.activations = gathers, width, activations
        ctx.save_for_backward(*blocks)
        return out

    @staticmethod
    def backward(ctx, grad):
        blocks, activations = ctx.saved_tensors, ctx.activations
        forward, reverse = ctx.gathers[2:]  # the inverse gathers: they undo the forward ones exactly
        depth, k = len(blocks), blocks[0].shape[0]
        g = _pad(grad, ctx.width)
        lead = g.shape[:-1]
        transposed_grads = []
        for layer in range(depth):  # the transposed half, out[i] = Σ_o w[i, o]·z[o], undone from the output side
            w, z = blocks[layer], activations[2 * depth - 1 - layer]
            g = g.reshape(*lead, -1).index_select(-1, reverse[layer]).view(*lead, k, -1)
            transposed_grads.append(_weight_grad(z, g, 1))
            g = (g.unsqueeze(-2) * w).sum(-3)
        weight_grads = [None] * depth
        for layer in reversed(range(depth)):  # out[o] = Σ_i z[i]·w[i, o]; the transposed use's gradient is added
            w, z, g = blocks[layer], activations[layer], g.view(*lead, k, -1)
            weight_grads[layer] = transposed_grads[layer].add_(_weight_grad(z, g, 0))  # in place: no 2nd copy
            g = (g.unsqueeze(-3) * w).sum(-2).view(*lead, -1).index_select(-1, forward[layer])
        ctx.activations = None
        input_grad = g[..., : grad.shape[-1]] if ctx.needs_input_grad[0] else None
        return input_grad, None, None, *weight_grads


def _storage_positions(width: int, k: int) -> torch.Tensor:
    """Where logical index j = c·k + i (entry i of block c) is stored: at i·C + c, C = width/k blocks."""
    j = torch.arange(width)
    return (j % k) * (width // k) + j // k


class KroneckerPreconditioner(nn.Module):
    """P(θ) = Eᵀ G̃ᵀ G̃ E, G̃ = B(θ⁽¹⁾)P₁ ⋯ B(θ⁽ᴺ⁾)P_N: the paper's "generalized Kronecker factorization".

    Each of the ``depth`` layers holds h/k dense k×k blocks as its own leaf tensor (a slice of one stacked tensor
    would zero-fill the whole stacked gradient on every backward). Blocks start as random orthogonal
    matrices (the V factor of the SVD of a Gaussian matrix), so P(θ₀) = I exactly. Permutations are fixed.

    Layout: layer ℓ's blocks are stored as ``blocks[ℓ][i, o, c]`` = entry (i, o) of block c (the block index last),
    and the vectors between layers as (k, C) with entry i of block c at i·C + c, so each block product is k
    multiply-adds over contiguous length-C vectors. The permutations are folded into the gathers that change
    between the layouts; :attr:`perms` gives them back in the paper's form (z ← z[π_ℓ] on the natural order).
    ``backend``: ``"torch"`` or ``"native"`` (the C library, same layouts; :mod:`lodo.optim.native`).
    """

    def __init__(
        self,
        n: int,
        depth: int = 16,
        block_size: int = 4,
        generator: torch.Generator | None = None,
        backend: str = "torch",
    ):
        super().__init__()
        self.n, self.depth, self.block_size, self.backend = n, depth, block_size, backend
        self.width = h = hidden_width(n, block_size)
        generator = generator or torch.Generator().manual_seed(0)
        perms, inverses = _random_permutations(depth, h, generator)
        stored = _storage_positions(h, block_size)
        logical = torch.argsort(stored)  # the logical index held at each storage position
        forward, reverse = torch.empty_like(perms), torch.empty_like(perms)
        for layer in range(depth):  # gathers that read the previous layout and write the (k, C) layout
            forward[layer] = (perms[layer] if layer == 0 else stored[perms[layer]])[logical]
            reverse[layer] = stored[inverses[layer]] if layer == 0 else stored[inverses[layer]][logical]
        # int32 indices: 4 gathers (and their inverses, for the backward) in the memory of 2 int64 permutations.
        for name, index in (("forward", forward), ("reverse", reverse)):
            self.register_buffer(f"{name}_gathers", index.int())
            self.register_buffer(f"{name}_inverses", torch.argsort(index, dim=1).int())
        self.blocks = nn.ParameterList()
        for _ in range(depth):
            gaussian = torch.randn(h // block_size, block_size, block_size, generator=generator, dtype=torch.float64)
            self.blocks.append(nn.Parameter(torch.linalg.svd(gaussian).Vh.permute(1, 2, 0).contiguous()))

    @property
    def perms(self) -> torch.Tensor:
        """The fixed permutations π_ℓ in the paper's form (depth, h): layer ℓ's input is z[π_ℓ]."""
        stored = _storage_positions(self.width, self.block_size).to(self.forward_gathers.device)
        perms = self.forward_gathers[:, stored].long()
        perms[1:] = torch.argsort(stored)[perms[1:]]
        return perms

    def block(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s blocks as (C, k, k) matrices θ[c] (a view of the parameter)."""
        return self.blocks[layer].permute(2, 0, 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        blocks = tuple(self.blocks)
        if self.backend == "native" and blocks and native.usable(v, blocks):
            if v.requires_grad or (torch.is_grad_enabled() and any(w.requires_grad for w in blocks)):
                return native.Product.apply(v, self, *blocks)
            return native.forward(self, v, blocks)
        # unbind: tuples of rows (``reversed`` on a tensor would flip, i.e. copy, all of them).
        gathers = tuple(b.unbind() for b in (self.forward_gathers, self.reverse_gathers))
        gathers += tuple(b.unbind() for b in (self.forward_inverses, self.reverse_inverses))
        if v.requires_grad or (torch.is_grad_enabled() and any(w.requires_grad for w in blocks)):
            return _KroneckerProduct.apply(v, gathers, self.width, *blocks)
        return _kronecker_forward(v, gathers, blocks, self.width)

    def plain_forward(self, v: torch.Tensor) -> torch.Tensor:
        """P(θ)·v through ordinary autograd, layer by layer: what ``torch.compile`` traces (``LODO(compile=True)``)."""
        gathers = (self.forward_gathers.unbind(), self.reverse_gathers.unbind())
        return _kronecker_forward(v, gathers, tuple(self.blocks), self.width)


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
    d ≥ 0, and not the identity at initialization (as in the authors' code). The w_ℓ are the rows of one
    (depth, h) parameter: the meta-Adam's time at small n grows with its number of tensors, and a row's
    gradient is cheap to stack (h values, against the Kronecker layers' 4h-value blocks).
    """

    def __init__(self, n: int, depth: int = 64, generator: torch.Generator | None = None, backend: str = "torch"):
        super().__init__()
        self.n, self.depth, self.width, self.backend = n, depth, 2 * n, backend
        generator = generator or torch.Generator().manual_seed(0)
        perms, inverses = _random_permutations(depth, self.width, generator)
        self.register_buffer("perms", perms)
        self.register_buffer("inverse_perms", inverses)
        std = depth**-0.5 if depth else 0.0
        rows = [torch.randn(self.width, generator=generator, dtype=torch.float64) * std for _ in range(depth)]
        self.weights = nn.Parameter(torch.stack(rows) if rows else torch.empty(0, self.width, dtype=torch.float64))
        self.diagonal = nn.Parameter(torch.ones(self.width, dtype=torch.float64))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        thetas = (self.diagonal, self.weights)
        needs_grad = v.requires_grad or (torch.is_grad_enabled() and any(t.requires_grad for t in thetas))
        if self.backend == "native" and native.usable(v, thetas):
            if needs_grad:
                return native.Product.apply(v, self, *thetas)
            return native.forward(self, v, thetas)
        perms, inverses = self.perms.unbind(), self.inverse_perms.unbind()
        if needs_grad:
            return _ResidualProduct.apply(v, perms, inverses, self.width, *thetas)
        return _residual_forward(v, perms, inverses, self.weights.unbind(), self.diagonal, self.width)


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
    def forward(ctx, v, perms, inverses, width, diagonal, weights):
        activations = []
        out = _residual_forward(v, perms, inverses, weights.unbind(), diagonal, width, activations)
        ctx.perms, ctx.inverses, ctx.width, ctx.activations = perms, inverses, width, activations
        ctx.save_for_backward(diagonal, weights)
        return out

    @staticmethod
    def backward(ctx, grad):
        (diagonal, stacked), activations, depth = ctx.saved_tensors, ctx.activations, len(ctx.perms)
        weights = stacked.unbind()
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
        weights_grad = torch.stack(weight_grads) if depth else torch.zeros_like(stacked)
        return input_grad, None, None, None, diagonal_grad, weights_grad
