"""The training loop: one plain loop for every optimizer and task, with honest timing (AlgoPerf style).

A "step" is one loss/gradient evaluation, as in the paper (SPEC §5): an optimizer whose ``step()`` calls its
closure twice spends two steps per iteration. The clock counts training only: tracked metrics are evaluated with
the clock stopped (the device is synchronized before each reading). A run continues until it has passed both of
its milestones (``steps`` evaluations and ``time_limit`` training seconds), as the authors' runs do, so that one run
gives the loss at both. A non-finite loss stops the run and marks it diverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

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


def train(
    task: Task,
    optimizer: torch.optim.Optimizer,
    steps: int,
    time_limit: float | None = None,
    metric_interval: int | None = None,
    on_row: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train ``optimizer`` on ``task`` until both milestones are passed or the loss diverges.

    ``on_row`` receives one dict per iteration: ``step`` (evaluations so far), ``iteration``, ``time`` (training
    seconds), ``loss`` (the first evaluation of the iteration, on its fresh minibatch) and, every
    ``metric_interval`` steps, the task's tracked metrics. Returns a summary dict with ``status``
    (``"completed"`` or ``"diverged"``), counts, training time, speed and the task's final metrics.
    """
    check_budget(steps, time_limit, metric_interval)
    device = task.parameters()[0].device
    evaluations = iteration = 0
    train_time = metric_time = 0.0
    next_metric = metric_interval or math.inf
    status, reason = "completed", ""
    bar = tqdm(total=steps, unit="step", disable=not progress, dynamic_ncols=True, leave=False)

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        loss = task.loss(batch)
        loss.backward()
        return loss

    def milestones_passed() -> bool:
        return evaluations >= steps and (time_limit is None or train_time >= time_limit)

    while not milestones_passed():
        _synchronize(device)
        start = time.perf_counter()
        batch = task.sample_batch()
        try:
            task.current_batch = batch  # for optimizers that need more than the closure (exact Hessians)
            loss = float(
                optimizer.step(closure).detach()
            )  # forces the device sync that ends the iteration, as in the reference
        except DIVERGENCE_ERRORS as error:
            loss, reason = math.nan, f"{type(error).__name__}: {error}"
        train_time += time.perf_counter() - start
        iteration += 1
        row = {"step": evaluations, "iteration": iteration, "time": train_time, "loss": loss}
        if not math.isfinite(loss):
            status, reason = "diverged", reason or f"non-finite loss {loss} at step {evaluations}"
        elif evaluations >= next_metric:
            metric_start = time.perf_counter()
            row.update(task.metrics(optimizer))
            _synchronize(device)
            metric_time += time.perf_counter() - metric_start
            while next_metric <= evaluations:
                next_metric += metric_interval
        if on_row is not None:
            on_row(row)
        bar.update(evaluations - bar.n)
        if bar.n % 50 == 0 or status != "completed":
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if status != "completed":
            break
    bar.close()

    final_metrics = {}
    if status == "completed":
        metric_start = time.perf_counter()
        final_metrics = task.final_metrics(optimizer)
        metric_time += time.perf_counter() - metric_start
    return {
        "status": status,
        "reason": reason,
        "steps": evaluations,
        "iterations": iteration,
        "train_time": train_time,
        "metric_time": metric_time,
        "steps_per_second": evaluations / train_time if train_time > 0 else math.nan,
        **final_metrics,
    }
