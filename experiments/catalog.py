"""The one list of experiments, read by the driver (scripts/reproduce.py) and by the report.

Kept free of plotting imports so that the driver never loads the report. Each name is a config file
``configs/experiment/<name>.yaml``; the order is the order they run in and appear in REPORT.md (``quadratic_frozen``
restarts from ``noisy_quadratic``'s LODO runs, so it comes after it). The quadratic ablations and sweeps test on a CPU
what the paper shows on MNIST (its ablation and sweep figures).
"""

EXPERIMENTS = [
    "rosenbrock",
    "noisy_quadratic",
    "quadratic_authors",
    "quadratic_ablations",
    "quadratic_frozen",
    "quadratic_beta",
    "quadratic_depth",
    "quadratic_block_size",
    "mnist_small",
    "mnist",
    "mnist_beta",
    "mnist_depth",
    "mnist_block_size",
]
# Run only at `scale=paper`: at the default scale LODO's β / depth / block-size sweeps run on the quadratic, where a
# CPU can give each point several seeds; 30 CNN steps per point (all a CPU affords) cannot separate them.
PAPER_SCALE_ONLY = ["mnist_beta", "mnist_depth", "mnist_block_size"]


def experiments_at(scale: str) -> list[str]:
    """The experiments that `make reproduce SCALE=<scale>` runs (and whose absence the report calls missing)."""
    return [e for e in EXPERIMENTS if scale in ("paper", "smoke") or e not in PAPER_SCALE_ONLY]


# The first-order baselines the paper compares LODO with (gradients only; README, *Optimizers and tasks*): Claim 1a is
# judged against these.
FIRST_ORDER = ["momentum", "rmsprop", "adam", "yogi", "lars"]
# LODO's five ablations in the paper (simpler inverse-Hessian representations or meta-optimizers): Claim 2.
ABLATIONS = ["lodo_diagonal", "lodo_global", "lodo_residuals", "lodo_no_momentum", "lodo_sgd"]
