"""Every claim criterion can come out every way: each verdict of each criterion from synthetic run tables."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/ is a top-level folder, not installed
from experiments import claims  # noqa: E402
from experiments.claims import AGREES, DISAGREES, INCONCLUSIVE  # noqa: E402

QUIET = [0.0, 0.1, -0.1]  # per-seed offsets: a seed spread (population std) of 0.082


def runs(experiment: str, losses: dict, steps: int = 1000, tune_seed=None, **columns) -> pd.DataFrame:
    """A tidy runs table: one row per (optimizer, seed) with the given final-window losses."""
    rows = []
    for optimizer, values in losses.items():
        for seed, value in enumerate(values):
            rows.append(
                {
                    "experiment": experiment,
                    "optimizer": optimizer,
                    "seed": seed,
                    "final_loss_at_steps": value,
                    "diverged_at_steps": not np.isfinite(value),
                    "milestone_steps": steps,
                    "tune_seed": tune_seed,
                    "tuned_path": f"configs/tuned/{experiment}/{optimizer}.yaml",
                    **{k: (v[optimizer][seed] if isinstance(v, dict) else v) for k, v in columns.items()},
                }
            )
    return pd.DataFrame(rows)


def around(mean: float) -> list[float]:
    return [mean + d for d in QUIET]


def verdicts(criterion, table, **sources):
    return {v.where: v for v in criterion(table, **sources)}


def only(criterion, table, **sources):
    (verdict,) = criterion(table, **sources)
    return verdict


@pytest.mark.parametrize(
    "lodo,adam,expected",
    [(10.0, 15.0, AGREES), (15.0, 10.0, DISAGREES), (10.0, 10.1, INCONCLUSIVE)],
)
@pytest.mark.parametrize("experiment", ["noisy_quadratic", "mnist_small"])
def test_claim_1a_each_verdict(lodo, adam, expected, experiment):
    table = runs(experiment, {"lodo": around(lodo), "adam": around(adam), "momentum": around(20.0)})
    verdict = quadratic_1a(table) if experiment == "noisy_quadratic" else verdicts(claims.claim_1a, table)[CNN]
    assert verdict.verdict == expected
    assert "adam" in verdict.numbers and verdict.seeds == [0, 1, 2]
    other = verdicts(claims.claim_1a, table)  # the other experiment has no runs here: inconclusive, not agrees
    assert [v.verdict for v in other.values()].count(INCONCLUSIVE) >= 1


CNN = f"mnist_small ({claims.REDUCED_CNN_LABEL})"


def quadratic_1a(table):
    return verdicts(claims.claim_1a, table)["noisy_quadratic"]


def test_a_win_over_an_untuned_optimizer_does_not_count():
    table = runs("noisy_quadratic", {"lodo": around(10.0), "adam": around(15.0)})
    table.loc[table["optimizer"] == "adam", "tuned_path"] = None  # generation-0 defaults
    verdict = quadratic_1a(table)
    assert verdict.verdict == INCONCLUSIVE and "untuned" in verdict.reason
    ablation = ablation_runs("quadratic_ablations", 10.0, {n: 12.0 for n in claims.ABLATIONS})
    verdict = claims.claim_2(ablation.drop(columns=["tuned_path"]))[0]  # records that predate provenance
    assert verdict.verdict == INCONCLUSIVE and "untuned" in verdict.reason


def test_claim_1a_without_data_or_with_one_seed_is_inconclusive():
    assert quadratic_1a(runs("rosenbrock", {"lodo": [1.0]})).verdict == INCONCLUSIVE
    one_seed = runs("noisy_quadratic", {"lodo": [10.0], "adam": [15.0]})
    assert quadratic_1a(one_seed).verdict == INCONCLUSIVE  # a spread needs two seeds
    diverged = runs("noisy_quadratic", {"lodo": [np.nan, np.nan], "adam": around(15.0)})
    assert quadratic_1a(diverged).verdict == DISAGREES  # LODO diverged everywhere the baseline did not


def hessian_runs(final, best_diagonal=0.84, best_scalar=0.845):
    n = len(final)
    return runs(
        "noisy_quadratic",
        {"lodo": [10.0] * n},
        final_hessian_error={"lodo": final},
        hessian_best_diagonal=best_diagonal,
        hessian_best_scalar=best_scalar,
        hessian_start=0.962,
    )


@pytest.mark.parametrize(
    "final,expected",
    [([0.80, 0.81, 0.79], AGREES), ([0.90, 0.91, 0.89], DISAGREES), ([0.80, 0.88, 0.84], INCONCLUSIVE)],
)
def test_claim_1b_each_verdict(final, expected):
    verdict = only(claims.claim_1b, hessian_runs(final))
    assert verdict.verdict == expected
    assert verdict.numbers["start at G = α₀I"] == pytest.approx(0.962)
    assert verdict.numbers["best scalar G"] == pytest.approx(0.845)
    if expected == DISAGREES:
        assert "best scalar" in verdict.reason  # above the scalar: no more than a step size


def test_claim_1b_without_references_is_inconclusive_and_says_why():
    table = hessian_runs([0.5, 0.5, 0.5]).drop(columns=["hessian_best_diagonal", "hessian_best_scalar"])
    verdict = only(claims.claim_1b, table)
    assert verdict.verdict == INCONCLUSIVE and "predate" in verdict.reason
    assert only(claims.claim_1b, runs("noisy_quadratic", {"lodo": [1.0, 1.0]})).verdict == INCONCLUSIVE


def ablation_runs(experiment, lodo, ablation, steps=1000):
    losses = {"lodo": around(lodo), **{name: around(v) for name, v in ablation.items()}}
    return runs(experiment, losses, steps=steps)


def test_claim_2_each_verdict_on_the_quadratic():
    names = claims.ABLATIONS
    where = f"quadratic_ablations ({claims.QUADRATIC_CLAIM_2_LABEL})"
    worse = ablation_runs("quadratic_ablations", 10.0, {n: 12.0 for n in names})
    assert verdicts(claims.claim_2, worse)[where].verdict == AGREES
    better = ablation_runs("quadratic_ablations", 10.0, {**{n: 12.0 for n in names}, "lodo_global": 8.0})
    verdict = verdicts(claims.claim_2, better)[where]
    assert verdict.verdict == DISAGREES and "lodo_global" in verdict.reason
    tie = ablation_runs("quadratic_ablations", 10.0, {**{n: 12.0 for n in names}, "lodo_sgd": 10.05})
    assert verdicts(claims.claim_2, tie)[where].verdict == INCONCLUSIVE
    none = verdicts(claims.claim_2, runs("rosenbrock", {"lodo": [1.0]}))
    assert none[where].verdict == INCONCLUSIVE and "no run records" in none[where].reason


def test_claim_2_on_mnist_below_the_papers_budget_is_a_pipeline_check():
    worse = ablation_runs("mnist", 2.0, {n: 3.0 for n in claims.ABLATIONS}, steps=20)
    verdict = verdicts(claims.claim_2, worse)["mnist"]
    assert verdict.verdict == INCONCLUSIVE and "pipeline check" in verdict.reason
    at_paper = ablation_runs("mnist", 2.0, {n: 3.0 for n in claims.ABLATIONS}, steps=300_000)
    assert verdicts(claims.claim_2, at_paper)["mnist"].verdict == AGREES


def test_claim_2_on_the_reduced_cnn_is_judged_at_any_budget_and_labelled():
    worse = ablation_runs("mnist_small", 2.0, {n: 3.0 for n in claims.ABLATIONS}, steps=600)
    assert verdicts(claims.claim_2, worse)[CNN].verdict == AGREES
    better = ablation_runs("mnist_small", 2.0, {**{n: 3.0 for n in claims.ABLATIONS}, "lodo_sgd": 1.0}, steps=600)
    assert verdicts(claims.claim_2, better)[CNN].verdict == DISAGREES


def bench(cnn_ratio):
    return pd.DataFrame(
        {
            "case": ["cnn", "cnn", "quadratic_100", "mlp_1m"],
            "optimizer": ["adam", "lodo", "lodo", "lodo"],
            "step_ratio_to_adam": [1.0, cnn_ratio, 10.5, 171.6],
        }
    )


@pytest.mark.parametrize("ratio,expected", [(1.048, AGREES), (3.5, DISAGREES), (np.nan, INCONCLUSIVE)])
def test_claim_3_each_verdict(ratio, expected):
    verdict = only(claims.claim_3, pd.DataFrame(), bench=bench(ratio))
    assert verdict.verdict == expected
    assert verdict.numbers["limit: quadratic n=100"] == pytest.approx(10.5)
    assert verdict.numbers["limit: MLP 1M parameters"] == pytest.approx(171.6)
    assert only(claims.claim_3, pd.DataFrame(), bench=None).verdict == INCONCLUSIVE
    other_batch = bench(1.0).assign(batch_size=32)
    assert only(claims.claim_3, pd.DataFrame(), bench=other_batch).verdict == INCONCLUSIVE


def rosenbrock(per_tune_seed: dict) -> pd.DataFrame:
    """Rosenbrock runs with one tuning seed per block: {tune_seed: {optimizer: mean}}."""
    return pd.concat(
        [
            runs("rosenbrock", {name: [m * (1 + d) for d in QUIET] for name, m in means.items()}, 200, tune_seed=t)
            for t, means in per_tune_seed.items()
        ],
        ignore_index=True,
    )


def test_claim_4_each_verdict_from_the_run_records():
    where = "rosenbrock (run records, step milestone)"
    # Each optimizer runs the values of the tuning seed its file chose (the median one): seeds differ by optimizer.
    beaten = pd.concat(
        [rosenbrock({1: {"lodo": 0.04}}), rosenbrock({0: {"adam": 1e-4}}), rosenbrock({2: {"momentum": 2e-3}})]
    )
    verdict = verdicts(claims.claim_4, beaten)[where]
    assert verdict.verdict == AGREES and verdict.tune_seeds == [0, 1, 2]
    best = rosenbrock({0: {"lodo": 1e-6, "adam": 1e-4}})
    assert verdicts(claims.claim_4, best)[where].verdict == DISAGREES
    tie = rosenbrock({0: {"lodo": 1e-4, "adam": 1.05e-4}})
    assert verdicts(claims.claim_4, tie)[where].verdict == INCONCLUSIVE
    assert verdicts(claims.claim_4, rosenbrock({0: {"adam": 1e-4}}))[where].verdict == INCONCLUSIVE  # no LODO


def test_claim_4_from_the_tuning_histories():
    where = "rosenbrock (tuning histories: one check run per tuning seed)"

    def tuning(lodo):
        return pd.DataFrame(
            {
                "task": "rosenbrock",
                "optimizer": ["lodo"] * 3 + ["adam"] * 3,
                "tune_seed": [0, 1, 2] * 2,
                "check_loss": [*lodo, 1e-4, 2e-4, 1e-3],
            }
        )

    empty = pd.DataFrame()
    assert verdicts(claims.claim_4, empty, tuning=tuning([0.04, 0.008, 0.00127]))[where].verdict == AGREES
    verdict = verdicts(claims.claim_4, empty, tuning=tuning([0.04, 1e-5, 0.00127]))[where]
    assert verdict.verdict == DISAGREES and "tuning seed(s) 1" in verdict.reason
    one = tuning([0.04, 0.008, 0.00127]).query("tune_seed == 0")
    assert verdicts(claims.claim_4, empty, tuning=one)[where].verdict == INCONCLUSIVE  # "every seed" needs 2


def test_evaluate_gives_one_row_per_verdict_with_its_numbers():
    table = pd.concat(
        [
            runs("noisy_quadratic", {"lodo": around(10.0), "adam": around(15.0)}),
            rosenbrock({0: {"lodo": 0.04, "adam": 1e-4}}),
        ],
        ignore_index=True,
    )
    result = claims.evaluate(table, bench=bench(1.05))
    assert list(result["claim"]) == ["1a", "1a", "1b", "2", "2", "2", "3", "4"]
    assert set(result["verdict"]) <= {AGREES, DISAGREES, INCONCLUSIVE}
    first = result[(result["claim"] == "1a") & (result["where"] == "noisy_quadratic")]
    assert list(first["verdict"]) == [AGREES]
    assert (result["rule"].str.len() > 0).all()
