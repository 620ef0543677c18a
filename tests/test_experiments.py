"""Every experiment config composes at every scale and runs at the smoke scale; budgets match the paper at paper
scale; the sweep arithmetic (METHODS.md §2) is right; a finished run is skipped on a rerun. The optimizers, tasks and
incompatible pairs are listed here literally, so that removing one from the registry fails a test."""

import itertools
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import lodo.optim  # noqa: F401 - registers every optimizer
import lodo.run  # noqa: F401 - registers the config resolvers
from lodo.optim.registry import OPTIMIZERS, incompatibility
from lodo.records import is_complete, read_summary
from lodo.run import execute
from lodo.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# MNIST at smoke scale still builds the 95k CNN per run; the full optimizer list runs in the slow test below.
MNIST_SMOKE_OPTIMIZERS = {"adam", "lodo"}
SWEEP_SMOKE_VALUES = {"7"}

# What the suite promises (README, *Optimizers and tasks*), written out: a name that disappears from the registry, or
# an incompatibility that is added or lifted, fails test_the_registry_holds_exactly_the_promised_optimizers or
# test_exactly_the_declared_pairs_are_incompatible instead of quietly shrinking the parametrized tests.
EXPECTED_OPTIMIZERS = [
    *("lodo", "lodo_diagonal", "lodo_global", "lodo_residuals", "lodo_no_momentum", "lodo_sgd"),
    *("adam", "momentum", "rmsprop", "yogi", "lars", "lbfgs_no_line_search", "olbfgs", "bfgs"),
    *("levenberg_marquardt", "l2lbgdbgd"),
    *("lbfgs", "kfac", "psgd_kron", "soap", "shampoo", "sgd_hd"),  # not in the paper
]
EXPECTED_TASKS = ["mnist_autoregression", "mnist_small", "noisy_quadratic", "rosenbrock"]
EXPECTED_INCOMPATIBLE = {
    ("bfgs", "mnist_autoregression"),  # a dense n×n inverse-Hessian approximation
    ("kfac", "noisy_quadratic"),  # K-FAC hooks an nn.Module's layers
    ("kfac", "rosenbrock"),
    ("lbfgs", "mnist_autoregression"),  # a strong-Wolfe line search on a stochastic objective
    ("levenberg_marquardt", "mnist_autoregression"),  # needs the exact Hessian
    ("bfgs", "mnist_small"),  # the reduced CNN: the same reasons
    ("lbfgs", "mnist_small"),
    ("levenberg_marquardt", "mnist_small"),
}


def config(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def sweep_jobs(experiment: str, scale: str = "smoke") -> list[dict]:
    """The sweep's jobs as override dicts (the cartesian product of hydra.sweeper.params)."""
    params = config(f"+experiment={experiment}", f"scale={scale}", hydra=True).hydra.sweeper.params
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def smoke_cases():
    cases = []
    for experiment in EXPERIMENTS:
        for job in sweep_jobs(experiment):
            name = job.get("optimizer", "lodo")
            slow = (experiment == "mnist" and name not in MNIST_SMOKE_OPTIMIZERS) or (
                "sweep_r" in job and job["sweep_r"] not in SWEEP_SMOKE_VALUES
            )
            marks = [pytest.mark.slow] if slow else []  # an unregistered optimizer fails its case, never skips it
            label = experiment + "-" + "-".join(f"{k}={v}" for k, v in job.items())
            cases.append(pytest.param(experiment, job, marks=marks, id=label))
    return cases


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def smoke_run(experiment: str, job: dict, runs_dir: Path) -> dict:
    overrides = [f"+experiment={experiment}", "scale=smoke", "logger=none", f"runs_dir={runs_dir}"]
    overrides += [f"{k}={v}" for k, v in job.items()]
    if experiment.startswith("mnist"):  # generating samples takes 784 CNN passes; tests/test_mnist.py covers it
        overrides.append("save_artifacts=false")
    cfg = config(*overrides)
    run_dir = runs_dir / "smoke" / experiment / ",".join(f"{k}={v}" for k, v in sorted(job.items()))
    return execute(cfg, run_dir), run_dir


def test_the_registry_holds_exactly_the_promised_optimizers():
    assert sorted(OPTIMIZERS) == sorted(EXPECTED_OPTIMIZERS)
    assert sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml")) == sorted(EXPECTED_OPTIMIZERS)
    assert sorted(TASKS) == EXPECTED_TASKS
    assert sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml")) == EXPECTED_TASKS


def test_exactly_the_declared_pairs_are_incompatible():
    reported = {(name, task) for name in EXPECTED_OPTIMIZERS for task in EXPECTED_TASKS if incompatibility(name, task)}
    assert reported == EXPECTED_INCOMPATIBLE


@pytest.mark.parametrize("scale", ["smoke", "default", "paper"])
def test_every_swept_optimizer_is_promised_and_runs_on_its_task(scale):
    for experiment in EXPERIMENTS:
        base = config(f"+experiment={experiment}", f"scale={scale}")
        task = base.task.name
        for job in sweep_jobs(experiment, scale):
            name = job.get("optimizer", base.optimizer.name)
            assert name in EXPECTED_OPTIMIZERS, f"{experiment} sweeps {name!r}"
            assert (name, task) not in EXPECTED_INCOMPATIBLE, f"{experiment} sweeps {name!r} on {task!r}"


@pytest.mark.parametrize("experiment,job", smoke_cases())
def test_every_experiment_runs_at_smoke_scale(experiment, job, runs_dir):
    if experiment == "quadratic_frozen":  # needs the noisy_quadratic LODO run's final state
        smoke_run("noisy_quadratic", {"optimizer": "lodo", "seed": job["pretrain_seed"]}, runs_dir)
    summary, run_dir = smoke_run(experiment, job, runs_dir)
    assert summary["status"] in ("completed", "diverged")
    assert is_complete(run_dir) and (run_dir / "metrics.csv").exists()
    assert summary["experiment"] == experiment
    if experiment == "noisy_quadratic":
        assert (run_dir / "optimizer.pt").exists()
    if experiment.startswith("mnist"):
        assert "test_loss" in summary or summary["status"] == "diverged"


def test_the_frozen_test_restarts_with_the_learned_preconditioner_and_keeps_it(runs_dir, tmp_path):
    import torch

    smoke_run("noisy_quadratic", {"optimizer": "lodo", "seed": "0"}, runs_dir)
    checkpoint = runs_dir / "smoke" / "noisy_quadratic" / "optimizer=lodo,seed=0" / "optimizer.pt"
    cfg = config(
        "+experiment=quadratic_frozen",
        "scale=smoke",
        "logger=none",
        f"runs_dir={runs_dir}",
        "seed=0",
        "save_optimizer_state=true",
    )
    assert cfg.preconditioner_checkpoint == str(checkpoint)
    assert cfg.optimizer.meta_lr == 0 and cfg.seed == 0  # same seed: the same Hessian (METHODS.md §7.7)
    execute(cfg, tmp_path)
    learned = torch.load(checkpoint, weights_only=True)["preconditioner"]
    after = torch.load(tmp_path / "optimizer.pt", weights_only=True)["preconditioner"]
    assert learned.keys() == after.keys()
    assert all(torch.equal(learned[k], after[k]) for k in learned)  # θ never moved


def test_paper_scale_budgets_are_the_papers():
    rosenbrock = config("+experiment=rosenbrock", "scale=paper", hydra=True)
    assert (rosenbrock.steps, rosenbrock.time_limit) == (200, 3)
    assert rosenbrock.hydra.sweeper.params.seed == "0,1,2,3,4,5,6,7"
    assert rosenbrock.hydra.sweeper.params.optimizer == "momentum,rmsprop,adam,yogi,lodo"
    quadratic = config("+experiment=noisy_quadratic", "scale=paper")
    assert (quadratic.steps, quadratic.time_limit, quadratic.task.n) == (100_000, 300, 100)
    mnist = config("+experiment=mnist", "scale=paper")
    assert (mnist.steps, mnist.time_limit, mnist.task.batch_size, mnist.task.test_images) == (
        300_000,
        50_000,
        256,
        10_000,
    )
    frozen = config("+experiment=quadratic_frozen", "scale=paper", hydra=True)
    assert frozen.steps == 100_000 and frozen.hydra.sweeper.params.pretrain_seed == "0,1,2"


@pytest.mark.parametrize("scale", ["smoke", "default", "paper"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_at_every_scale(experiment, scale):
    cfg = config(f"+experiment={experiment}", f"scale={scale}", hydra=True)
    assert cfg.experiment == experiment and cfg.scale == scale
    assert cfg.hydra.sweep.dir == f"runs/{scale}/{experiment}"
    assert isinstance(cfg.steps, int) and cfg.steps > 0


def test_the_frozen_control_meets_a_fresh_eigenbasis_with_the_same_learned_preconditioner():
    same = config("+experiment=quadratic_frozen", "pretrain_seed=2")
    fresh = config("+experiment=quadratic_frozen", "pretrain_seed=2", "fresh_basis=1000")
    assert same.seed == 2 and fresh.seed == 1002  # the task's seed draws the eigenbasis
    assert same.preconditioner_checkpoint == fresh.preconditioner_checkpoint  # the θ learned on seed 2's bowl
    assert "seed=2/optimizer.pt" in fresh.preconditioner_checkpoint


def test_the_driver_and_the_report_read_one_experiment_list():
    import sys

    sys.path.insert(0, str(ROOT))  # experiments/ is a top-level folder, not installed
    from experiments.catalog import EXPERIMENTS as listed

    assert sorted(listed) == sorted(EXPERIMENTS)  # every config is run and reported, and nothing else
    driver = (ROOT / "scripts" / "reproduce.py").read_text()
    assert "from experiments.report" not in driver and "import experiments.report" not in driver  # no plotting


def test_experiments_share_one_base_and_the_mnist_sweeps_one_sweep_base():
    for path in (CONFIGS / "experiment").glob("*.yaml"):
        text = path.read_text()
        assert "/experiment_base/" in text, path.name
        assert "runs_dir:" not in text and "sweep:\n    dir" not in text, path.name  # only in the base
    for name in ("mnist_beta", "mnist_depth", "mnist_block_size"):
        assert "- /experiment_base/mnist_sweep" in (CONFIGS / "experiment" / f"{name}.yaml").read_text()
        cfg = config(f"+experiment={name}", "scale=default", hydra=True)
        assert cfg.budget == "mnist_sweeps" and cfg.hydra.sweeper.params.sweep_r == "0,1,2,3,4,5,6,7"
        assert cfg.steps == cfg.budgets.mnist_sweeps.steps and cfg.save_artifacts is False


def test_sweep_values_follow_methods_section_2():
    beta_star = config("+experiment=mnist_beta").lodo_tuned.beta
    assert beta_star == tuned_values("mnist_autoregression", "lodo")["beta"]  # β* is LODO's tuned β on MNIST
    betas = [config("+experiment=mnist_beta", f"sweep_r={r}").optimizer.beta for r in range(8)]
    assert betas[0] == 0 and betas[7] == pytest.approx(beta_star)
    assert betas[1] == pytest.approx(1 - (1 - beta_star) ** (1 / 7))
    depths = [config("+experiment=mnist_depth", f"sweep_r={r}").optimizer.depth for r in range(8)]
    assert depths == [4 * r for r in range(8)]
    blocks = [config("+experiment=mnist_block_size", f"sweep_r={r}").optimizer for r in range(8)]
    assert [(b.block_size, b.depth) for b in blocks] == [(k, 64 // k) for k in range(2, 10)]


def tuned_values(task: str, optimizer: str) -> dict:
    """The values of ``configs/tuned/<task>/<optimizer>.yaml``, read here rather than copied into the tests."""
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "tuned" / task / f"{optimizer}.yaml"))


def test_experiments_read_the_tuned_hyperparameters():
    tuned = tuned_values("mnist_autoregression", "lodo")
    generation0 = OmegaConf.to_container(OmegaConf.load(CONFIGS / "optimizer" / "lodo.yaml"))
    assert {"lr", "meta_lr", "beta"} <= set(tuned)
    assert any(tuned[k] != generation0[k] for k in tuned)  # otherwise this test could not tell the two apart
    cfg = config("+experiment=mnist", "optimizer=lodo")
    assert {k: cfg.optimizer[k] for k in tuned} == tuned
    defaults = config("+experiment=mnist", "optimizer=lodo", "~tuned@optimizer").optimizer
    assert {k: defaults[k] for k in tuned} == {k: generation0[k] for k in tuned}  # generation 0


def test_a_finished_run_is_skipped_without_training_or_rewriting_its_record(tmp_path, monkeypatch):
    cfg = config("+experiment=rosenbrock", "scale=smoke", "logger=none", "optimizer=adam", "seed=0")
    first = execute(cfg, tmp_path)
    # Mark the finished record: a rerun that rewrote summary.json or metrics.csv would lose the marks.
    marked = {**read_summary(tmp_path), "marker": "written by the test"}
    (tmp_path / "summary.json").write_text(json.dumps(marked))
    metrics = (tmp_path / "metrics.csv").read_bytes() + b"# marker\n"
    (tmp_path / "metrics.csv").write_bytes(metrics)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(lodo.run, "train", no_training)
    assert execute(cfg, tmp_path) == marked == {**first, "marker": "written by the test"}
    assert read_summary(tmp_path) == marked and (tmp_path / "metrics.csv").read_bytes() == metrics


def test_launcher_presets_compose():
    local = config("+experiment=rosenbrock", "hydra/launcher=local", hydra=True).hydra.launcher
    assert local.n_jobs == 2 and "JoblibLauncher" in local._target_
    slurm = config("+experiment=rosenbrock", "hydra/launcher=slurm", hydra=True).hydra.launcher
    assert "SlurmLauncher" in slurm._target_


@pytest.mark.slow  # a Hydra multirun in a subprocess: five runs
def test_rosenbrock_multirun_cli_into_deterministic_folders(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lodo.run",
            "--multirun",
            "+experiment=rosenbrock",
            "scale=smoke",
            "logger=none",
            f"runs_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.parent.name for p in (tmp_path / "smoke" / "rosenbrock").glob("*/summary.json"))
    assert names == sorted(f"optimizer={o},seed=0" for o in ("momentum", "rmsprop", "adam", "yogi", "lodo"))
