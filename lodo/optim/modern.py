"""Registry entries for optimizers that are not in the paper: K-FAC and modern relatives of LODO (SPEC §4).

K-FAC (:mod:`lodo.optim.kfac`) is the baseline the project asks for on the CNN. PSGD-Kron, SOAP and Shampoo
also fit curvature-like preconditioners online; SGD-HD (:mod:`lodo.optim.hypergradient`) learns a step size by
a one-step hypergradient like LODO-Global. PSGD-Kron, SOAP and Shampoo come from ``pytorch-optimizer``
(kozistr, 4.1.0). All of them are labelled ``in_paper=False``; the hyperparameter names follow the tuner's
convention (names containing "momentum" or "beta" are searched as decays, reference §4.1).
"""

from __future__ import annotations

import pytorch_optimizer

from lodo.optim.hypergradient import SGDHD
from lodo.optim.kfac import KFAC
from lodo.optim.registry import OptimizerSpec, register


def _kfac(params, task, **hparams):
    model = getattr(task, "model", None)
    if model is None:
        raise ValueError("K-FAC needs a task that provides an nn.Module (task.model) to hook its layers")
    return KFAC(model, params=params, **hparams)


def _psgd_kron(params, task, lr=1e-3, momentum=0.9, update_probability=None, min_ndim_triangular=1):
    return pytorch_optimizer.Kron(
        params,
        lr=lr,
        momentum=momentum,
        pre_conditioner_update_probability=update_probability,
        min_ndim_triangular=min_ndim_triangular,  # 1, unlike the library's 2: a dense Q for vectors (all of x)
        precondition_dtype=None,  # the parameters' dtype: float64 on the quadratic and Rosenbrock (SPEC §7.8)
    )


def _soap(
    params, task, lr=3e-3, beta_1=0.95, beta_2=0.95, shampoo_beta=None, precondition_frequency=10, precondition_1d=True
):
    return pytorch_optimizer.SOAP(
        params,
        lr=lr,
        betas=(beta_1, beta_2),
        shampoo_beta=shampoo_beta,
        weight_decay=0.0,  # the paper's baselines have no weight decay
        precondition_frequency=precondition_frequency,
        precondition_1d=precondition_1d,  # True, unlike the library: else SOAP is Adam on one-vector tasks
    )


def _shampoo(params, task, lr=1e-3, momentum=0.0, preconditioning_compute_steps=1, matrix_eps=1e-6):
    return pytorch_optimizer.Shampoo(
        params,
        lr=lr,
        momentum=momentum,
        preconditioning_compute_steps=preconditioning_compute_steps,
        matrix_eps=matrix_eps,
    )


def _sgd_hd(params, task, lr=1e-3, hypergrad_lr=1e-3, momentum=0.0):
    return SGDHD(params, lr=lr, hypergrad_lr=hypergrad_lr, momentum=momentum)


register(
    OptimizerSpec(
        "kfac",
        _kfac,
        ("lr", "damping", "momentum"),
        needs=frozenset({"model"}),
        in_paper=False,
        description="K-FAC (Martens & Grosse 2015), per-group factors for grouped convs; not in the paper",
    )
)
for _name, _build, _tuned, _description in [
    ("psgd_kron", _psgd_kron, ("lr", "momentum"), "PSGD-Kron (Li 2018; pytorch-optimizer's Kron)"),
    ("soap", _soap, ("lr", "beta_1", "beta_2"), "SOAP (Vyas et al. 2024; pytorch-optimizer)"),
    ("shampoo", _shampoo, ("lr", "momentum"), "Shampoo (Gupta et al. 2018; pytorch-optimizer)"),
    ("sgd_hd", _sgd_hd, ("lr", "hypergrad_lr", "momentum"), "SGD with hypergradient descent (Baydin et al. 2018)"),
]:
    register(OptimizerSpec(_name, _build, _tuned, in_paper=False, description=f"{_description}; not in the paper"))
