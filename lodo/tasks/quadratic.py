"""The noisy quadratic bowl of METHODS.md §3: a fixed ill-conditioned Hessian whose minimum random-walks."""

from __future__ import annotations

import math

import torch

from lodo.tasks.base import Task


class NoisyQuadratic(Task):
    """f_t(x) = ½ (x − c_t)ᵀ H (x − c_t), with c_t ← c_{t−1} + ε_t, ε_t ~ N(0, σ² I) before every fresh batch.

    H = Q diag(λ) Qᵀ with λ log-spaced on [``min_eigenvalue``, ``max_eigenvalue``] and Q a seeded random orthogonal
    matrix (METHODS.md §A.5.1: the Q factor of a Gaussian matrix). x₀ = 0. A "same batch" re-evaluation passes back the
    same centre, so curvature pairs are exact (y = H s). The best expected loss any method can reach, by Newton's
    step onto the previous centre, is :attr:`newton_floor` = ½ σ² tr H (7.411847 at the paper's settings).
    """

    name = "noisy_quadratic"
    provides = frozenset({"closure", "hessian"})
    default_dtype = torch.float64

    def __init__(
        self,
        n: int = 100,
        min_eigenvalue: float = 1e-3,
        max_eigenvalue: float = 1.0,
        noise_scale: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ):
        if n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        if not 0 < min_eigenvalue <= max_eigenvalue:
            raise ValueError(f"need 0 < min_eigenvalue <= max_eigenvalue, got {min_eigenvalue}, {max_eigenvalue}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be non-negative, got {noise_scale}")
        dtype = dtype or self.default_dtype
        self.n, self.noise_scale = n, noise_scale
        # Every draw comes from one CPU generator so a seed means the same bowl on every device (METHODS.md §7.5).
        self.generator = torch.Generator().manual_seed(seed)
        self.eigenvalues = torch.logspace(
            math.log10(min_eigenvalue), math.log10(max_eigenvalue), n, dtype=torch.float64
        )
        basis, _ = torch.linalg.qr(torch.randn(n, n, generator=self.generator, dtype=torch.float64))
        hessian = (basis * self.eigenvalues) @ basis.T
        self.H = ((hessian + hessian.T) / 2).to(dtype=dtype, device=device)
        self.x = torch.zeros(n, dtype=dtype, device=device, requires_grad=True)
        self.center = torch.zeros(n, dtype=dtype, device=device)

    @property
    def newton_floor(self) -> float:
        return 0.5 * self.noise_scale**2 * float(self.eigenvalues.sum())

    def scaled_identity_error(self, c: float) -> float:
        """‖I − cH‖_F / √n: the Hessian error of G = cI, e.g. LODO's start G = α₀I (the α₀I reference line)."""
        residual = torch.eye(self.n, dtype=torch.float64) - c * self.H.double().cpu()
        return float(torch.linalg.matrix_norm(residual) / math.sqrt(self.n))

    @property
    def best_scalar_error(self) -> float:
        """min over scalars c of ‖I − cH‖_F / √n, exactly.

        ‖I − cH‖_F² = n − 2c·tr H + c²·‖H‖_F² is a parabola in c: c* = tr H / ‖H‖_F², minimum n − (tr H)² / ‖H‖_F².
        No step size alone gets below this; a preconditioner that does has learned more than a learning rate.
        """
        H = self.H.double().cpu()
        squared = self.n - float(torch.trace(H)) ** 2 / float((H * H).sum())
        return math.sqrt(max(squared, 0.0) / self.n)

    @property
    def best_diagonal_error(self) -> float:
        """min over diagonal D of ‖I − DH‖_F / √n, exactly.

        Row i of I − DH is eᵢ − dᵢ·hᵢ (hᵢ row i of H), so each dᵢ is its own least-squares problem: dᵢ* = Hᵢᵢ / ‖hᵢ‖²,
        leaving 1 − Hᵢᵢ² / ‖hᵢ‖² in row i. ‖I − HD‖_F is the same number (H is symmetric).
        """
        H = self.H.double().cpu()
        squared = self.n - float((torch.diagonal(H) ** 2 / (H * H).sum(dim=1)).sum())
        return math.sqrt(max(squared, 0.0) / self.n)

    def parameters(self) -> list[torch.Tensor]:
        return [self.x]

    def sample_batch(self) -> torch.Tensor:
        step = torch.randn(self.n, generator=self.generator, dtype=torch.float64) * self.noise_scale
        self.center = self.center + step.to(self.center)
        return self.center

    def state_dict(self) -> dict:
        return {**super().state_dict(), "center": self.center.clone()}  # the random walk's position

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.center = state["center"].to(self.center)

    def loss_at(self, values: list[torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        (x,) = values
        d = x - batch
        return 0.5 * d @ (self.H @ d)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loss_at([self.x], batch)

    def hessian(self, batch: torch.Tensor) -> torch.Tensor:
        return self.H

    def metric_names(self, optimizer=None) -> list[str]:
        return ["hessian_error"] if hasattr(optimizer, "apply_preconditioner") else []

    def metrics(self, optimizer=None) -> dict[str, float]:
        """‖I − G H‖_F / √n for optimizers with a preconditioner G (LODO's Hessian error, METHODS.md §1).

        Computed exactly from the n columns of H rather than estimated from 100 random unit vectors as in the
        authors' code: at n = 100 it costs the same and carries no sampling noise.
        """
        if not hasattr(optimizer, "apply_preconditioner"):
            return {}
        with torch.no_grad():
            # Rows of G·H (G and H are symmetric, so G applied to each row of H gives (GH)ᵀ).
            gh_t = optimizer.apply_preconditioner(self.H)
            residual = torch.eye(self.n, dtype=gh_t.dtype, device=gh_t.device) - gh_t
        return {"hessian_error": float(torch.linalg.matrix_norm(residual) / math.sqrt(self.n))}
