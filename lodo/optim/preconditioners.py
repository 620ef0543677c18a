"""LODO's learnable preconditioners, as ``nn.Module``s mapping a batch of vectors v (…, n) to P(θ)·v.

LODO multiplies by α₀: its preconditioner is G(θ) = α₀·P(θ). Each module's parameters are the meta-learned θ.

* :class:`KroneckerPreconditioner` — the paper's P = Eᵀ G̃ᵀ G̃ E, G̃ a product of block-diagonal matrices B_ℓ and
  fixed random permutations Π_ℓ (the paper's figure of LODO's architecture). Identity at initialization.
* :class:`DiagonalPreconditioner` — LODO-Diagonal: P = diag(w), w = 1 at init.
* :class:`GlobalPreconditioner` — LODO-Global: P = w·I, one scalar (the scalar the name intends; README,
  *Faithful to the paper*).
* :class:`ResidualPreconditioner` — LODO-Residuals: P = Eᵀ M_0ᵀ⋯M_{L−1}ᵀ D M_{L−1}⋯M_0 E, M_ℓ = I + diag(w_ℓ) Π_ℓ.

The Kronecker and residual stacks are each written twice: once plainly, for reading (:func:`kronecker_reference`,
:func:`residual_reference`, also the modules' ``reference`` method), and once fast (the modules' ``forward``), which
tests/test_lodo_fast.py checks against the plain one. The fast path runs in PyTorch (any device and dtype) or, with
``backend="native"``, through the C library of :mod:`lodo.optim.native` (CPU, float32/float64; other inputs still
take the PyTorch path).
"""

from __future__ import annotations

import torch
from torch import nn

from lodo.optim import native


def hidden_width(n: int, block_size: int) -> int:
    """h: the smallest multiple of ``block_size`` strictly greater than 2n (as in the authors' code; CNN → 189,396)."""
    return 2 * n + block_size - (2 * n) % block_size


def _random_permutations(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random permutations of range(``size``) and their inverses, each (count, size) int64."""
    perms = torch.stack([torch.randperm(size, generator=generator) for _ in range(count)]) if count else None
    if perms is None:
        empty = torch.empty(0, size, dtype=torch.long)
        return empty, empty
    return perms, torch.argsort(perms, dim=1)


def _pad(v: torch.Tensor, width: int) -> torch.Tensor:
    """E v: v zero-padded to ``width`` entries."""
    return torch.nn.functional.pad(v, (0, width - v.shape[-1]))


# --- The plain definitions ----------------------------------------------------------------------------------------


def kronecker_reference(v: torch.Tensor, perms: torch.Tensor, blocks) -> torch.Tensor:
    """P(θ)·v = Eᵀ G̃ᵀ G̃ E v as in :class:`KroneckerPreconditioner`'s docstring, written for reading, not speed.

    ``perms``: the π_ℓ, (N, h); ``blocks[ℓ]``: θ_ℓ as C matrices (C, k, k). v: (…, n).
    """

    def times_blocks(z, theta):  # block c of z (a row vector) times θ[c]: B_ℓ z for θ_ℓ, B_ℓᵀ z for θ_ℓᵀ
        k = theta.shape[-1]
        return torch.cat([z[..., c * k : (c + 1) * k] @ theta[c] for c in range(len(theta))], dim=-1)

    n, layers = v.shape[-1], list(zip(perms, blocks))
    z = _pad(v, perms.shape[-1])  # E v
    for pi, theta in layers:  # G̃ = B_{N−1} Π_{N−1} ⋯ B_0 Π_0
        z = times_blocks(z[..., pi], theta)  # Π_ℓ: z ← z[π_ℓ]; then B_ℓ
    for pi, theta in reversed(layers):  # G̃ᵀ = Π_0ᵀ B_0ᵀ ⋯ Π_{N−1}ᵀ B_{N−1}ᵀ
        z = times_blocks(z, theta.mT)[..., torch.argsort(pi)]  # B_ℓᵀ; then Π_ℓᵀ: z ← z[π_ℓ⁻¹]
    return z[..., :n]  # Eᵀ z


def residual_reference(v: torch.Tensor, perms, weights, diagonal: torch.Tensor) -> torch.Tensor:
    """P(θ)·v = Eᵀ M_0ᵀ⋯M_{L−1}ᵀ D M_{L−1}⋯M_0 E v as in :class:`ResidualPreconditioner`'s docstring, plainly.

    ``perms``: the π_ℓ, (L, h); ``weights``: the w_ℓ, (L, h); ``diagonal``: d, (h,). v: (…, n).
    """
    n, layers = v.shape[-1], list(zip(perms, weights))
    z = _pad(v, diagonal.shape[-1])  # E v
    for pi, w in layers:  # M_ℓ z = z + w_ℓ ⊙ z[π_ℓ], ℓ = 0, …, L−1
        z = z + w * z[..., pi]
    z = diagonal * z  # D z
    for pi, w in reversed(layers):  # M_ℓᵀ z = z + (w_ℓ ⊙ z)[π_ℓ⁻¹], ℓ = L−1, …, 0
        z = z + (w * z)[..., torch.argsort(pi)]
    return z[..., :n]  # Eᵀ z


# --- The Kronecker stack ------------------------------------------------------------------------------------------


class KroneckerPreconditioner(nn.Module):
    r"""P(θ) = Eᵀ G̃ᵀ G̃ E: the paper's "generalized Kronecker factorization"; LODO's G(θ) = α₀·P(θ).

    The symbols, and the names that hold them here::

        n          the number of parameters: P·v for v ∈ ℝⁿ                                          ``n``
        k, C       the block size, and C = h/k blocks per layer                                     ``block_size``
        h          the hidden width, the smallest multiple of k above 2n (:func:`hidden_width`)     ``width``
        N          the number of layers, ℓ = 0, …, N−1                                              ``depth``
        E          h×n zero-padding: E v = (v, 0, …, 0); Eᵀ z = the first n entries of z
        π_ℓ        a fixed random permutation of {0, …, h−1}                                        ``perms[ℓ]``
        Π_ℓ        its h×h matrix: Π_ℓ z = z[π_ℓ], Π_ℓᵀ z = z[π_ℓ⁻¹]
        θ_ℓ[c]     block c of layer ℓ, a learned k×k matrix                                         ``block(ℓ)[c]``
        B_ℓ        h×h block diagonal, diag(θ_ℓ[0]ᵀ, …, θ_ℓ[C−1]ᵀ): entries ck … ck+k−1 of z, as a row
                   vector, times θ_ℓ[c] (the authors' code's ``z @ θ``)
        G̃          B_{N−1} Π_{N−1} ⋯ B_1 Π_1 B_0 Π_0 (h×h)
        P          Eᵀ G̃ᵀ G̃ E (n×n, symmetric positive semi-definite), computed as
                       z ← E v
                       for ℓ = 0, …, N−1:  z ← B_ℓ Π_ℓ z          # G̃: permute, multiply blocks
                       for ℓ = N−1, …, 0:  z ← Π_ℓᵀ B_ℓᵀ z        # G̃ᵀ: multiply transposed blocks, unpermute
                       return Eᵀ z

    :func:`kronecker_reference` (:meth:`reference`) is this box in code. At initialization each θ_ℓ[c] is a random
    orthogonal matrix (the Vᵀ factor of the SVD of a Gaussian matrix), so G̃ is orthogonal and P(θ₀) = EᵀE = I.
    The permutations are fixed (drawn from ``generator``); only the blocks are learned.

    The fast path (:meth:`forward`; the C library of :mod:`lodo.optim.native` uses the same layouts):

    * Layer ℓ's blocks are one leaf tensor ``blocks[ℓ]`` of shape (k, k, C), ``blocks[ℓ][i, o, c]`` = θ_ℓ[c][i, o]
      (one tensor per layer: a slice of one stacked tensor would zero-fill the whole stacked gradient on every
      backward).
    * Between block products a vector is kept in the *column layout*: entry i of block c (natural index ck + i) at
      position i·C + c, i.e. as k rows of length C, so that B_ℓ is k multiply-adds of contiguous rows.
    * Each Π_ℓ is folded, together with the layout changes around it, into an int32 index table for
      ``index_select``; two buffers of shape (N, h) hold them:

      - ``gather_pi[ℓ]`` applies Π_ℓ: it reads B_{ℓ−1}'s output (column layout) and writes B_ℓ's input (column
        layout). Layer 0 is the exception: it reads E v, which is in natural order (no block product came before).
      - ``gather_pi_t[ℓ]`` applies Π_ℓᵀ: it reads B_ℓᵀ's output and writes B_{ℓ−1}ᵀ's input (column layouts). Layer 0
        is the exception again: it writes the natural order, whose first n entries are Eᵀ z.
      - Between G̃ and G̃ᵀ (B_{N−1}, then B_{N−1}ᵀ) there is no gather: both work in the column layout.

      ``gather_pi_t[ℓ]`` is the inverse of ``gather_pi[ℓ]`` (argsort): each undoes the other, so the backward of a
      gather by one is a gather by the other. :attr:`perms` recovers the π_ℓ from ``gather_pi``.

    ``backend``: ``"torch"`` or ``"native"`` (the C library; CPU float32/float64 inputs only).
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
        perms, _ = _random_permutations(depth, h, generator)
        column = _column_positions(h, block_size)  # column[j]: where natural index j sits in the column layout
        natural = torch.argsort(column)  # natural[p]: the natural index at column position p
        gather_pi = torch.empty_like(perms)
        for layer in range(depth):
            # Where z[π_ℓ]'s entry j is read from: position π_ℓ[j] of E v (natural order) for layer 0, its column
            # position for later layers; listed in column order, the order B_ℓ reads its input in.
            source = perms[layer] if layer == 0 else column[perms[layer]]
            gather_pi[layer] = source[natural]
        # int32: both tables in the memory of one int64 permutation per layer.
        self.register_buffer("gather_pi", gather_pi.int())
        self.register_buffer("gather_pi_t", torch.argsort(gather_pi, dim=1).int())
        self.blocks = nn.ParameterList()
        for _ in range(depth):
            gaussian = torch.randn(h // block_size, block_size, block_size, generator=generator, dtype=torch.float64)
            self.blocks.append(nn.Parameter(torch.linalg.svd(gaussian).Vh.permute(1, 2, 0).contiguous()))

    @property
    def perms(self) -> torch.Tensor:
        """The fixed permutations π_ℓ, (N, h): Π_ℓ z = z[π_ℓ] on the natural order (undoing ``gather_pi``'s layouts)."""
        column = _column_positions(self.width, self.block_size).to(self.gather_pi.device)
        perms = self.gather_pi[:, column].long()  # what each table reads, back in natural order
        perms[1:] = torch.argsort(column)[perms[1:]]  # layers ≥ 1 read column positions: back to natural indices
        return perms

    def block(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s blocks as C matrices θ_ℓ[c], (C, k, k) (a view of the parameter)."""
        return self.blocks[layer].permute(2, 0, 1)

    def reference(self, v: torch.Tensor) -> torch.Tensor:
        """P(θ)·v by :func:`kronecker_reference`: the definition that :meth:`forward` is tested against."""
        return kronecker_reference(v, self.perms, [self.block(layer) for layer in range(self.depth)])

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        blocks = tuple(self.blocks)
        needs_grad = v.requires_grad or (torch.is_grad_enabled() and any(w.requires_grad for w in blocks))
        if self.backend == "native" and blocks and native.usable(v, blocks):
            return native.Product.apply(v, self, *blocks) if needs_grad else native.forward(self, v, blocks)
        # unbind: tuples of rows (``reversed`` on a tensor would flip, i.e. copy, all of them).
        gather_pi, gather_pi_t = self.gather_pi.unbind(), self.gather_pi_t.unbind()
        if needs_grad:
            return _KroneckerProduct.apply(v, gather_pi, gather_pi_t, self.width, *blocks)
        return _kronecker_apply(v, blocks, gather_pi, gather_pi_t, self.width)

    def plain_forward(self, v: torch.Tensor) -> torch.Tensor:
        """P(θ)·v through ordinary autograd, layer by layer: what ``torch.compile`` traces (``LODO(compile=True)``)."""
        return _kronecker_apply(v, tuple(self.blocks), self.gather_pi.unbind(), self.gather_pi_t.unbind(), self.width)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # State dicts written before the tables had these names held four: "forward_gathers" (= gather_pi),
        # "reverse_gathers" (= gather_pi_t) and their inverses (the same two again).
        if prefix + "forward_gathers" in state_dict:
            state_dict[prefix + "gather_pi"] = state_dict.pop(prefix + "forward_gathers")
            state_dict[prefix + "gather_pi_t"] = state_dict.pop(prefix + "reverse_gathers")
            for name in ("forward_inverses", "reverse_inverses"):
                state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _column_positions(width: int, k: int) -> torch.Tensor:
    """Where natural index j = c·k + i (entry i of block c) sits in the column layout: at i·C + c, C = width/k."""
    j = torch.arange(width)
    return (j % k) * (width // k) + j // k


def _block_product(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """B_ℓ in the column layout: out[…, o, c] = Σ_i z[…, i, c]·w[i, o, c], i.e. block c of z times θ_ℓ[c].

    One multiply-add over all C blocks per block index i: k vectorized passes instead of C tiny matrix products.
    """
    out = z[..., 0:1, :] * w[0]
    for i in range(1, w.shape[0]):
        out = torch.addcmul(out, z[..., i : i + 1, :], w[i])
    return out


def _transposed_block_product(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """B_ℓᵀ in the column layout: out[…, i, c] = Σ_o w[i, o, c]·z[…, o, c], i.e. block c of z times θ_ℓ[c]ᵀ."""
    out = w[:, 0] * z[..., 0:1, :]
    for o in range(1, w.shape[1]):
        out = torch.addcmul(out, w[:, o], z[..., o : o + 1, :])
    return out


def _kronecker_apply(v, blocks, gather_pi, gather_pi_t, width, activations=None):
    """P(θ)·v, the box of :class:`KroneckerPreconditioner` in the column layout; ``gather_pi`` and ``gather_pi_t``
    are tuples of its tables' rows. The inputs of the 2N block products are appended to ``activations`` if given."""
    k = blocks[0].shape[0] if blocks else 1
    z = _pad(v, width)  # E v, in natural order
    lead = z.shape[:-1]
    for index, w in zip(gather_pi, blocks):  # G̃: z ← B_ℓ Π_ℓ z, ℓ = 0, …, N−1
        z = z.reshape(*lead, -1).index_select(-1, index).view(*lead, k, -1)
        if activations is not None:
            activations.append(z)
        z = _block_product(z, w)
    for index, w in zip(reversed(gather_pi_t), reversed(blocks)):  # G̃ᵀ: z ← Π_ℓᵀ B_ℓᵀ z, ℓ = N−1, …, 0
        z = z.view(*lead, k, -1)
        if activations is not None:
            activations.append(z)
        z = _transposed_block_product(z, w).view(*lead, -1).index_select(-1, index)
    return z[..., : v.shape[-1]]  # Eᵀ z (layer 0's gather_pi_t wrote the natural order)


# The weight gradients of the two block products, summed over any leading (batch) dimensions. For one vector, one
# broadcast product; for a batch, the per-index ``sum_to_size`` that autograd makes (hence bitwise autograd's values).


def _block_weight_grad(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """For out = :func:`_block_product` (z, w) and its gradient g: dw[i, o, c] = Σ z[…, i, c]·g[…, o, c]."""
    if z.dim() == 2:
        return z.unsqueeze(1) * g.unsqueeze(0)
    return torch.stack([(g * z[..., i : i + 1, :]).sum_to_size(g.shape[-2:]) for i in range(z.shape[-2])], 0)


def _transposed_block_weight_grad(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """For out = :func:`_transposed_block_product` (z, w) and its gradient g: dw[i, o, c] = Σ g[…, i, c]·z[…, o, c]."""
    if z.dim() == 2:
        return g.unsqueeze(1) * z.unsqueeze(0)
    return torch.stack([(g * z[..., o : o + 1, :]).sum_to_size(g.shape[-2:]) for o in range(z.shape[-2])], 1)


class _KroneckerProduct(torch.autograd.Function):
    """The Kronecker P(θ)·v for the whole stack as one autograd node, with a hand-written backward.

    The backward makes the tensor operations autograd makes for the layer-by-layer graph of
    :func:`_kronecker_apply` (each product and each ``sum_to_size`` with the same operands and layouts, the two
    uses of each θ_ℓ summed), so values are bitwise those of plain autograd, but it records one node instead of
    ~2k per layer, and undoes each gather by one table with a gather by the other (its inverse) instead of
    accumulating into zero-filled buffers.
    """

    @staticmethod
    def forward(ctx, v, gather_pi, gather_pi_t, width, *blocks):
        activations = []
        out = _kronecker_apply(v, blocks, gather_pi, gather_pi_t, width, activations)
        ctx.gather_pi, ctx.gather_pi_t, ctx.width, ctx.activations = gather_pi, gather_pi_t, width, activations
        ctx.save_for_backward(*blocks)
        return out

    @staticmethod
    def backward(ctx, grad):
        blocks, activations = ctx.saved_tensors, ctx.activations
        depth, k = len(blocks), blocks[0].shape[0] if blocks else 1
        g = _pad(grad, ctx.width)
        lead = g.shape[:-1]
        transposed_grads = []  # the gradients of θ_ℓ's use in B_ℓᵀ
        for layer in range(depth):  # back through G̃ᵀ, from its output: ℓ = 0, …, N−1
            w, z = blocks[layer], activations[2 * depth - 1 - layer]
            g = g.reshape(*lead, -1).index_select(-1, ctx.gather_pi[layer]).view(*lead, k, -1)  # through Π_ℓᵀ: Π_ℓ
            transposed_grads.append(_transposed_block_weight_grad(z, g))
            g = (g.unsqueeze(-2) * w).sum(-3)  # through B_ℓᵀ
        weight_grads = [None] * depth
        for layer in reversed(range(depth)):  # back through G̃: ℓ = N−1, …, 0
            w, z, g = blocks[layer], activations[layer], g.view(*lead, k, -1)
            weight_grads[layer] = transposed_grads[layer].add_(_block_weight_grad(z, g))  # in place: no 2nd copy
            g = (g.unsqueeze(-3) * w).sum(-2)  # through B_ℓ
            g = g.view(*lead, -1).index_select(-1, ctx.gather_pi_t[layer])  # through Π_ℓ: Π_ℓᵀ
        ctx.activations = None
        input_grad = g[..., : grad.shape[-1]] if ctx.needs_input_grad[0] else None
        return input_grad, None, None, None, *weight_grads


# --- The ablations ------------------------------------------------------------------------------------------------


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
    r"""LODO-Residuals: P(θ) = Eᵀ M_0ᵀ ⋯ M_{L−1}ᵀ D M_{L−1} ⋯ M_0 E, residual layers in place of G̃.

    The symbols (n, E, π_ℓ, Π_ℓ as in :class:`KroneckerPreconditioner`), and the names that hold them::

        h          the hidden width, exactly 2n                                                     ``width``
        L          the number of layers, ℓ = 0, …, L−1                                              ``depth``
        π_ℓ        a fixed random permutation of {0, …, h−1}; π_ℓ⁻¹ its inverse    ``perms[ℓ]``, ``inverse_perms[ℓ]``
        w_ℓ        learned, ∈ ℝʰ, drawn from N(0, 1/L) (std 1/8 for the paper's 64 layers)          ``weights[ℓ]``
        D          diag(d), d ∈ ℝʰ learned, 1 at init                                               ``diagonal``
        M_ℓ        I + diag(w_ℓ) Π_ℓ:  M_ℓ z = z + w_ℓ ⊙ z[π_ℓ],  M_ℓᵀ z = z + (w_ℓ ⊙ z)[π_ℓ⁻¹]

    :func:`residual_reference` (:meth:`reference`) is this in code. P is symmetric; PSD only while d ≥ 0, and not
    the identity at initialization (as in the authors' code). The w_ℓ are the rows of one (L, h) parameter: the
    meta-Adam's time at small n grows with its number of tensors, and a row's gradient is cheap to stack (h values,
    against the Kronecker layers' 4h-value blocks).
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

    def reference(self, v: torch.Tensor) -> torch.Tensor:
        """P(θ)·v by :func:`residual_reference`: the definition that :meth:`forward` is tested against."""
        return residual_reference(v, self.perms, self.weights, self.diagonal)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        thetas = (self.diagonal, self.weights)
        needs_grad = v.requires_grad or (torch.is_grad_enabled() and any(t.requires_grad for t in thetas))
        if self.backend == "native" and native.usable(v, thetas):
            return native.Product.apply(v, self, *thetas) if needs_grad else native.forward(self, v, thetas)
        perms, inverses = self.perms.unbind(), self.inverse_perms.unbind()
        if needs_grad:
            return _ResidualProduct.apply(v, perms, inverses, self.width, *thetas)
        return _residual_apply(v, perms, inverses, self.weights.unbind(), self.diagonal, self.width)


def _residual_apply(v, perms, inverses, weights, diagonal, width, activations=None):
    """P(θ)·v as :func:`residual_reference` computes it, with ``index_select`` by the stored inverses; the values
    the backward needs (2L + 1 vectors) are appended to ``activations`` if given."""
    keep = activations.append if activations is not None else lambda z: None
    z = _pad(v, width)  # E v
    for perm, w in zip(perms, weights):  # z ← M_ℓ z
        permuted = z.index_select(-1, perm)
        keep(permuted)
        z = z + w * permuted
    keep(z)
    z = diagonal * z  # z ← D z
    for inverse, w in zip(reversed(inverses), reversed(weights)):  # z ← M_ℓᵀ z
        keep(z)
        z = z + (w * z).index_select(-1, inverse)
    return z[..., : v.shape[-1]]  # Eᵀ z


def _sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == like.dim() else t.sum_to_size(like.shape)


class _ResidualProduct(torch.autograd.Function):
    """LODO-Residuals' P(θ)·v as one autograd node; the backward makes autograd's products and sums, bitwise."""

    @staticmethod
    def forward(ctx, v, perms, inverses, width, diagonal, weights):
        activations = []
        out = _residual_apply(v, perms, inverses, weights.unbind(), diagonal, width, activations)
        ctx.perms, ctx.inverses, ctx.width, ctx.activations = perms, inverses, width, activations
        ctx.save_for_backward(diagonal, weights)
        return out

    @staticmethod
    def backward(ctx, grad):
        (diagonal, stacked), activations, depth = ctx.saved_tensors, ctx.activations, len(ctx.perms)
        weights = stacked.unbind()
        g = _pad(grad, ctx.width)
        transposed_grads = []  # the gradients of w_ℓ's use in M_ℓᵀ
        for layer in range(depth):  # back through z ← M_ℓᵀ z = z + (w ⊙ z)[π_ℓ⁻¹], ℓ = 0, …, L−1
            w, z = weights[layer], activations[2 * depth - layer]
            g_product = g.index_select(-1, ctx.perms[layer])
            transposed_grads.append(_sum_to(g_product * z, w))
            g = g + g_product * w
        diagonal_grad = _sum_to(g * activations[depth], diagonal)
        g = g * diagonal
        weight_grads = [None] * depth
        for layer in reversed(range(depth)):  # back through z ← M_ℓ z = z + w ⊙ z[π_ℓ], ℓ = L−1, …, 0
            w = weights[layer]
            weight_grads[layer] = _sum_to(g * activations[layer], w).add_(transposed_grads[layer])
            g = g + (g * w).index_select(-1, ctx.inverses[layer])
        ctx.activations = None
        input_grad = g[..., : grad.shape[-1]] if ctx.needs_input_grad[0] else None
        weights_grad = torch.stack(weight_grads) if depth else torch.zeros_like(stacked)
        return input_grad, None, None, None, diagonal_grad, weights_grad
