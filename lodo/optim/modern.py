"""Registry entries for optimizers that are not in the paper: K-FAC and modern relatives of LODO (METHODS.md §4).

K-FAC (:mod:`lodo.optim.kfac`) is the baseline the project asks for on the CNN. PSGD-Kron, SOAP and Shampoo
also fit curvature-like preconditioners online; SGD-HD (:mod:`lodo.optim.sgd_hd`) learns a step size by
a one-step hypergradient like LODO-Global. PSGD-Kron, SOAP and Shampoo come from ``pytorch-optimizer``
(kozistr, 4.1.0). All of them are labelled ``in_paper=False``; the hyperparameter names follow the tuner's
convention (names containing "momentum" or "beta" are searched as decays, METHODS.md §A.4.1).
"""

from __future__ import annotations

import importlib

from lodo.optim.kfac import KFAC
from lodo.optim.registry import OptimizerSpec, register
from lodo.optim.sgd_hd import SGDHD


class _PytorchOptimizer:
    """``pytorch_optimizer``, imported when PSGD-Kron, SOAP or Shampoo is built: the suite's extra
    (``pip install 'lodo[suite]'``), not a dependency of the library; without it, building one of them says so."""

    def __getattr__(self, name: str):
        try:
            module = importlib.import_module("pytorch_optimizer")
        except ImportError as error:
            raise ImportError(
                "psgd_kron, soap and shampoo need pytorch-optimizer==4.1.0: pip install 'lodo[suite]'"
            ) from error
        return getattr(module, name)


pytorch_optimizer = _PytorchOptimizer()


def _kfac(
    params,
    task,
    *,
    lr,
    damping,
    momentum,
    factor_decay,
    factor_update_interval,
    inverse_update_interval,
    fisher,
    kl_clip,
    seed,
):
    model = getattr(task, "model", None)
    if model is None:
        raise ValueError("K-FAC needs a task that provides an nn.Module (task.model) to hook its layers")
    return KFAC(
        model,
        params=params,
        lr=lr,
        damping=damping,
        momentum=momentum,
        factor_decay=factor_decay,
        factor_update_interval=factor_update_interval,
        inverse_update_interval=inverse_update_interval,
        fisher=fisher,
        kl_clip=kl_clip,
        seed=seed,
    )


register(
    OptimizerSpec(
        name="kfac",
        label="K-FAC",
        build=_kfac,
        tuned=("lr", "damping", "momentum"),
        needs=frozenset({"model"}),
        in_paper=False,
        description="K-FAC (Martens & Grosse 2015), per-group factors for grouped convs; not in the paper",
    )
)


def _psgd_kron(params, task, *, lr, momentum, update_probability, min_ndim_triangular):
    return pytorch_optimizer.Kron(
        params,
        lr=lr,
        momentum=momentum,
        pre_conditioner_update_probability=update_probability,
        min_ndim_triangular=min_ndim_triangular,  # 1, unlike the library's 2: a dense Q for vectors (all of x)
        precondition_dtype=None,  # the parameters' dtype: float64 on the quadratic and Rosenbrock (METHODS.md §7.8)
    )


register(
    OptimizerSpec(
        name="psgd_kron",
        label="PSGD-Kron",
        build=_psgd_kron,
        tuned=("lr", "momentum"),
        in_paper=False,
        description="PSGD-Kron (Li 2018; pytorch-optimizer's Kron); not in the paper",
    )
)


def _soap(params, task, *, lr, beta_1, beta_2, shampoo_beta, precondition_frequency, precondition_1d):
    return pytorch_optimizer.SOAP(
        params,
        lr=lr,
        betas=(beta_1, beta_2),
        shampoo_beta=shampoo_beta,
        weight_decay=0.0,  # the paper's baselines have no weight decay
        precondition_frequency=precondition_frequency,
        precondition_1d=precondition_1d,  # True, unlike the library: else SOAP is Adam on one-vector tasks
    )


register(
    OptimizerSpec(
        name="soap",
        label="SOAP",
        build=_soap,
        tuned=("lr", "beta_1", "beta_2"),
        in_paper=False,
        description="SOAP (Vyas et al. 2024; pytorch-optimizer); not in the paper",
    )
)


def _shampoo(params, task, *, lr, momentum, preconditioning_compute_steps, matrix_eps):
    return pytorch_optimizer.Shampoo(
        params,
        lr=lr,
        momentum=momentum,
        preconditioning_compute_steps=preconditioning_compute_steps,
        matrix_eps=matrix_eps,
    )


register(
    OptimizerSpec(
        name="shampoo",
        label="Shampoo",
        build=_shampoo,
        tuned=("lr", "momentum"),
        in_paper=False,
        description="Shampoo (Gupta et al. 2018; pytorch-optimizer); not in the paper",
    )
)


def _sgd_hd(params, task, *, lr, hypergrad_lr, momentum):
    return SGDHD(params, lr=lr, hypergrad_lr=hypergrad_lr, momentum=momentum)


register(
    OptimizerSpec(
        name="sgd_hd",
        label="SGD-HD",
        build=_sgd_hd,
        tuned=("lr", "hypergrad_lr", "momentum"),
        in_paper=False,
        description="SGD with hypergradient descent (Baydin et al. 2018); not in the paper",
    )
)
