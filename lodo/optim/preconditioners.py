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


class _Gather(torch.autograd.Function):
    """z[..., perm] whose backward is a gather with the inverse permutation (no scatter, no zero fill)."""

    @staticmethod
    def forward(ctx, z, perm, inverse):
        ctx.save_for_backward(inverse)
        return z[..., perm]

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad[..., inverse], None, None


def permute(z: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """z[..., perm], differentiable through a gather with ``inverse`` = argsort(perm)."""
    return _Gather.apply(z, perm, inverse)


def _random_permutations(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perms = torch.stack([torch.randperm(size, generator=generator) for _ in range(count)]) if count else None
    if perms is None:
        empty = torch.empty(0, size, dtype=torch.long)
        return empty, empty
    return perms, torch.argsort(perms, dim=1)


def _pad(v: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(v, (0, width - v.shape[-1]))


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
            self.blocks.append(nn.Parameter(torch.linalg.svd(gaussian).Vh))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        k = self.block_size
        z = _pad(v, self.width)
        lead = z.shape[:-1]
        for perm, inverse, w in zip(self.perms, self.inverse_perms, self.blocks):
            z = permute(z, perm, inverse)
            # Row vector times block, as in the reference (§2.1): out[c, o] = Σ_i z[c, i] θ[c, i, o].
            z = (z.reshape(*lead, -1, 1, k) @ w).reshape(*lead, -1)
        for perm, inverse, w in zip(
            reversed(self.perms), reversed(self.inverse_perms), reversed(self.blocks)
        ):
            z = (z.reshape(*lead, -1, 1, k) @ w.transpose(-1, -2)).reshape(*lead, -1)
            z = permute(z, inverse, perm)
        return z[..., : self.n]


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
            nn.Parameter(torch.randn(self.width, generator=generator, dtype=torch.float64) * std)
            for _ in range(depth)
        )
        self.diagonal = nn.Parameter(torch.ones(self.width, dtype=torch.float64))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        z = _pad(v, self.width)
        for perm, inverse, w in zip(self.perms, self.inverse_perms, self.weights):
            z = z + w * permute(z, perm, inverse)
        z = self.diagonal * z
        for perm, inverse, w in zip(
            reversed(self.perms), reversed(self.inverse_perms), reversed(self.weights)
        ):
            z = z + permute(w * z, inverse, perm)
        return z[..., : self.n]
