"""One definition of each optimizer's defaults: ``configs/optimizer/<name>.yaml`` (the suite's generation 0).

The registry's builders take exactly the config's keys, keyword-only and without defaults of their own; the
optimizer classes keep torch-style constructor defaults as library API. Where a class has a parameter for a config
key, its default must equal the config's value, or the difference is listed below with its reason.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import lodo.optim  # noqa: F401  (registers every optimizer)
from lodo.optim.registry import OPTIMIZERS, config_values, optimizer_label
from lodo.tasks import NoisyQuadratic

# A config key whose class parameter has another name: (optimizer, key) -> (parameter, index into a tuple default).
CLASS_PARAMETER = {
    ("adam", "beta_1"): ("betas", 0),
    ("adam", "beta_2"): ("betas", 1),
    ("rmsprop", "rho"): ("alpha", None),
    ("yogi", "beta_1"): ("beta1", None),
    ("yogi", "beta_2"): ("beta2", None),
    ("soap", "beta_1"): ("betas", 0),
    ("soap", "beta_2"): ("betas", 1),
    ("psgd_kron", "update_probability"): ("pre_conditioner_update_probability", None),
}
# Config keys with no constructor parameter of their own.
NO_CLASS_PARAMETER = {
    ("lbfgs", "max_line_search"): "the builder turns it into torch's max_eval = max_iter · (max_line_search + 1)",
}
_LODO_DEPTH = "LODO's depth=None means 16 for the Kronecker preconditioner and 64 for the residual one: the same depth"
# Where the class's constructor default and the suite's generation-0 value differ, and why.
DIFFERENCES = {
    ("lodo", "depth"): _LODO_DEPTH,
    ("lodo_residuals", "depth"): _LODO_DEPTH,
    ("lodo_no_momentum", "depth"): _LODO_DEPTH,
    ("lodo_sgd", "depth"): _LODO_DEPTH,
    ("momentum", "lr"): "torch.optim.SGD's 1e-3; the paper's generation 0 (METHODS.md §A.4.2) is 1e-2",
    ("rmsprop", "lr"): "torch.optim.RMSprop's 1e-2; the paper used Keras's default 1e-3",
    ("rmsprop", "rho"): "torch's alpha = 0.99; the paper used Keras's rho = 0.9",
    ("lbfgs", "history_size"): "torch's 100; 10 is tfp's default, which the authors' unused L-BFGS would have had",
    ("lbfgs", "max_iter"): "torch's 20; 1 iteration per step() keeps the training loop's milestones exact",
    ("psgd_kron", "min_ndim_triangular"): "the library's 2; 1 gives the one-vector tasks a dense Q",
    ("soap", "precondition_1d"): "the library's False; True, else SOAP is Adam on the one-vector tasks",
}


class _ModelTask:
    """What K-FAC needs from a task: an nn.Module to hook."""

    model = nn.Linear(3, 2)


def built(name: str) -> torch.optim.Optimizer:
    spec = OPTIMIZERS[name]
    task = _ModelTask() if "model" in spec.needs else NoisyQuadratic(n=4)
    params = list(task.model.parameters()) if "model" in spec.needs else task.parameters()
    torch.manual_seed(0)
    return spec.build(params, task, **config_values(name))


def keyword_arguments(name: str) -> list[inspect.Parameter]:
    parameters = list(inspect.signature(OPTIMIZERS[name].build).parameters.values())
    assert [p.name for p in parameters[:2]] == ["params", "task"], f"{name}: builder(params, task, *, ...)"
    return parameters[2:]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_builder_takes_exactly_the_config_keys_without_defaults(name):
    arguments = keyword_arguments(name)
    named = [p for p in arguments if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in named), f"{name}: keyword-only hyperparameters"
    with_defaults = [p.name for p in named if p.default is not inspect.Parameter.empty]
    assert not with_defaults, f"{name}'s builder has defaults of its own for {with_defaults}: they belong in the config"
    assert {p.name for p in named} == set(config_values(name)), f"{name}: builder keys != configs/optimizer keys"
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in arguments):  # only LODO forwards library options
        assert isinstance(built(name), lodo.optim.LODO), f"{name}: only LODO's builders forward **options"


def class_default(name: str, cls: type, key: str):
    parameter, index = CLASS_PARAMETER.get((name, key), (key, None))
    signature = inspect.signature(cls.__init__).parameters
    assert parameter in signature, f"{name}: {cls.__name__} has no parameter {parameter!r} for {key!r}"
    default = signature[parameter].default
    assert default is not inspect.Parameter.empty, f"{name}: {cls.__name__}.{parameter} has no default"
    return default if index is None else default[index]


def test_class_defaults_equal_the_config_values_or_the_difference_is_listed():
    differences = set()
    for name in OPTIMIZERS:
        cls = type(built(name))
        for key, value in config_values(name).items():
            if (name, key) in NO_CLASS_PARAMETER:
                continue
            default = class_default(name, cls, key)
            if default != value or isinstance(default, bool) != isinstance(value, bool):
                differences.add((name, key))
    unexplained = sorted(differences - DIFFERENCES.keys())
    stale = sorted(DIFFERENCES.keys() - differences)
    assert not unexplained, f"class defaults differ from configs/optimizer/ without a listed reason: {unexplained}"
    assert not stale, f"listed differences that are no longer differences: {stale}"


def test_lodo_depth_none_is_the_configs_depth():
    x = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    assert lodo.optim.LODO([x], seed=0).preconditioner.depth == config_values("lodo")["depth"] == 16
    residual = lodo.optim.LODO([x], seed=0, preconditioner="residual")
    assert residual.preconditioner.depth == config_values("lodo_residuals")["depth"] == 64


def test_every_optimizer_has_a_label_and_unknown_names_keep_theirs():
    labels = [spec.label for spec in OPTIMIZERS.values()]
    assert all(labels) and len(set(labels)) == len(labels)
    assert optimizer_label("lodo_diagonal") == "LODO-Diagonal" and optimizer_label("not_registered") == "not_registered"
