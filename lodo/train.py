"""The training loop: one plain loop for every optimizer and task, with honest timing (AlgoPerf style).

A "step" is one loss/gradient evaluation, as in the paper: an optimizer whose ``step()`` calls its
closure twice spends two steps per iteration. The clock counts training only: tracked metrics are evaluated with
the clock stopped (the device is synchronized before each reading). A run continues until it has passed both of
its milestones (``steps`` evaluations and ``time_limit`` training seconds), as the authors' runs do, so that one run
gives the loss at both. A non-finite loss stops the run and marks it diverged. A run can be checkpointed every few
training seconds, stopped on request, and resumed from its last checkpoint as if it had never stopped.

An optimizer whose ``step()`` takes more than the closure names those keyword arguments in its class's
``step_inputs`` (Levenberg–Marquardt: ``{"hessian"}``); the loop computes each with the task for the iteration's
batch (:data:`STEP_INPUTS`) and passes it explicitly: ``optimizer.step(closure, hessian=task.hessian(batch))``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from lodo.checkpoint import rng_state, set_rng_state
from lodo.tasks.base import Task

DIVERGENCE_ERRORS = (torch.linalg.LinAlgError, FloatingPointError, OverflowError)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_budget(steps: int, time_limit: float | None, metric_interval: int | None) -> None:
    """Raise a ``ValueError`` naming the bad value if a run's budget is impossible."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if time_limit is not None and time_limit < 0:
        raise ValueError(f"time_limit must be non-negative or null, got {time_limit}")
    if metric_interval is not None and metric_interval < 1:
        raise ValueError(f"metric_interval must be a positive integer or null, got {metric_interval}")


# What the loop can pass to ``optimizer.step`` beyond the closure, by the name the optimizer's class declares in
# ``step_inputs`` (the same names as a task's ``provides``): each computed by the task for the iteration's batch.
STEP_INPUTS: dict[str, Callable[[Task, Any], Any]] = {
    "hessian": lambda task, batch: task.hessian(batch),  # the exact Hessian at the current parameters
}


def check_step_inputs(task: Task, optimizer: torch.optim.Optimizer) -> frozenset[str]:
    """The names in ``optimizer.step_inputs`` (none if it has no such attribute); a ``ValueError`` names one that
    the loop cannot supply or ``task`` does not provide."""
    wanted = frozenset(getattr(optimizer, "step_inputs", ()))
    unknown = sorted(wanted - STEP_INPUTS.keys())
    if unknown:
        raise ValueError(f"{type(optimizer).__name__}.step needs {', '.join(unknown)}, which no training loop supplies")
    missing = sorted(wanted - task.provides)
    if missing:
        task_name = getattr(task, "name", type(task).__name__)
        raise ValueError(f"{type(optimizer).__name__} needs {', '.join(missing)}, which {task_name} does not provide")
    return wanted


def train(
    task: Task,
    optimizer: torch.optim.Optimizer,
    steps: int,
    time_limit: float | None = None,
    metric_interval: int | None = None,
    on_row: Callable[[dict], None] | None = None,
    progress: bool = True,
    checkpoint_interval: float | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    stop: Callable[[], str | None] | None = None,
) -> dict:
    """Train ``optimizer`` on ``task`` until both milestones are passed or the loss diverges.

    ``on_row`` receives one dict per iteration: ``step`` (evaluations so far), ``iteration``, ``time`` (training
    seconds), ``loss`` (the first evaluation of the iteration, on its fresh minibatch) and, every
    ``metric_interval`` steps, the task's tracked metrics. Every ``checkpoint_interval`` training seconds (``None``
    or 0: never) ``on_checkpoint`` receives a checkpoint (:mod:`lodo.checkpoint`; its ``loop.iteration`` is the
    number of rows before it), and ``resume`` continues from one. ``stop`` is asked after every iteration; a reason
    it returns (e.g. a signal) ends the run with a last checkpoint and status ``"interrupted"``. Returns a summary
    dict with ``status`` (``"completed"``, ``"diverged"`` or ``"interrupted"``), the reason, counts, training time,
    speed and the task's final metrics.
    """
    check_budget(steps, time_limit, metric_interval)
    inputs_needed = sorted(check_step_inputs(task, optimizer))
    device = task.parameters()[0].device
    loop = {"evaluations": 0, "iteration": 0, "train_time": 0.0, "metric_time": 0.0}
    loop["next_metric"] = metric_interval or math.inf
    if resume is not None:
        loop.update(resume["loop"])
        task.load_state_dict(resume["task"])
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
    next_checkpoint = loop["train_time"] + checkpoint_interval if checkpoint_interval else math.inf
    status, reason = "completed", ""
    bar = tqdm(total=steps, unit="step", disable=not progress, dynamic_ncols=True, leave=False)

    def checkpoint() -> None:
        if on_checkpoint is not None:
            state = {"loop": dict(loop), "optimizer": optimizer.state_dict(), "task": task.state_dict()}
            on_checkpoint({**state, "rng": rng_state()})

    def closure() -> torch.Tensor:
        loop["evaluations"] += 1
        optimizer.zero_grad()
        loss = task.loss(batch)
        loss.backward()
        return loss

    def milestones_passed() -> bool:
        return loop["evaluations"] >= steps and (time_limit is None or loop["train_time"] >= time_limit)

    while not milestones_passed():
        _synchronize(device)
        start = time.perf_counter()
        batch = task.sample_batch()
        try:
            inputs = {name: STEP_INPUTS[name](task, batch) for name in inputs_needed}  # usually none
            # float() forces the device sync that ends the iteration, as in the reference
            loss = float(optimizer.step(closure, **inputs).detach())
        except DIVERGENCE_ERRORS as error:
            loss, reason = math.nan, f"{type(error).__name__}: {error}"
        loop["train_time"] += time.perf_counter() - start
        loop["iteration"] += 1
        evaluations = loop["evaluations"]
        row = {"step": evaluations, "iteration": loop["iteration"], "time": loop["train_time"], "loss": loss}
        if not math.isfinite(loss):
            status, reason = "diverged", reason or f"non-finite loss {loss} at step {evaluations}"
        elif evaluations >= loop["next_metric"]:
            metric_start = time.perf_counter()
            row.update(task.metrics(optimizer))
            _synchronize(device)
            loop["metric_time"] += time.perf_counter() - metric_start
            while loop["next_metric"] <= evaluations:
                loop["next_metric"] += metric_interval
        if on_row is not None:
            on_row(row)
        bar.update(evaluations - bar.n)
        if bar.n % 50 == 0 or status != "completed":
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if status != "completed":
            break
        stop_reason = stop() if stop is not None else None
        if stop_reason:
            status, reason = "interrupted", stop_reason
            checkpoint()
            break
        if loop["train_time"] >= next_checkpoint and not milestones_passed():
            checkpoint()
            next_checkpoint = loop["train_time"] + checkpoint_interval
    bar.close()

    final_metrics = {}
    if status == "completed":
        metric_start = time.perf_counter()
        final_metrics = task.final_metrics(optimizer)
        loop["metric_time"] += time.perf_counter() - metric_start
    evaluations, train_time = loop["evaluations"], loop["train_time"]
    return {
        "status": status,
        "reason": reason,
        "steps": evaluations,
        "iterations": loop["iteration"],
        "train_time": train_time,
        "metric_time": loop["metric_time"],
        "steps_per_second": evaluations / train_time if train_time > 0 else math.nan,
        **final_metrics,
    }
