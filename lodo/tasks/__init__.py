"""Tasks: plain classes with a small interface (:class:`lodo.tasks.base.Task`); no Hydra inside."""

from lodo.tasks.base import Task
from lodo.tasks.mnist import MnistAutoregression, MnistAutoregressionSmall
from lodo.tasks.quadratic import NoisyQuadratic
from lodo.tasks.rosenbrock import Rosenbrock

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (NoisyQuadratic, Rosenbrock, MnistAutoregression, MnistAutoregressionSmall)
}


def task_class(name: str) -> type[Task]:
    """The task class registered under ``name``; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = [
    "TASKS",
    "MnistAutoregression",
    "MnistAutoregressionSmall",
    "NoisyQuadratic",
    "Rosenbrock",
    "Task",
    "task_class",
]
