"""The alpha-beta-gamma cost model: closed forms, monotonicity, paper predictions, calibration fit."""
import math

import pytest

from hpclm.comm import costmodel
from hpclm.comm.costmodel import CostParams, fit_alpha_beta, fit_gamma, predict
from hpclm.errors import UserError

P1 = CostParams(alpha=1e-6, beta=1e-9, gamma=5e-10)


def test_closed_forms_power_of_two():
    n, P = 1 << 20, 8
    a, b, g = P1.alpha, P1.beta, P1.gamma
    assert predict("ring", n, P, P1) == pytest.approx(2 * 7 * a + 2 * 7 / 8 * n * b + 7 / 8 * n * g)
    assert predict("recursive_doubling", n, P, P1) == pytest.approx(3 * (a + n * b + n * g))
    assert predict("rabenseifner", n, P, P1) == pytest.approx(6 * a + 2 * 7 / 8 * n * b + 7 / 8 * n * g)
    assert predict("tree", n, P, P1) == pytest.approx(3 * (2 * a + 2 * n * b + n * g))


def test_non_power_of_two_adds_the_fold():
    n, a, b, g = 1000, P1.alpha, P1.beta, P1.gamma
    fold = 2 * a + 2 * n * b + n * g
    assert predict("recursive_doubling", n, 6, P1) == pytest.approx(predict("recursive_doubling", n, 4, P1) + fold)
    assert predict("rabenseifner", n, 5, P1) == pytest.approx(predict("rabenseifner", n, 4, P1) + fold)


def test_trivial_cases_cost_nothing():
    assert predict("ring", 1 << 20, 1, P1) == 0.0
    assert predict("tree", 0, 16, P1) == 0.0


@pytest.mark.parametrize("algorithm", costmodel.MODELED)
def test_monotonic_in_size_and_ranks(algorithm):
    sizes = [2 ** k for k in range(2, 28, 3)]
    times = [predict(algorithm, n, 8, P1) for n in sizes]
    assert times == sorted(times) and times[0] < times[-1]
    by_p = [predict(algorithm, 1 << 20, P, P1, ranks_per_node=1) for P in (2, 4, 8, 16, 32)]
    assert by_p == sorted(by_p)


def test_small_messages_prefer_latency_optimal_large_prefer_bandwidth_optimal():
    params = CostParams(alpha=5e-6, beta=1 / 10e9, gamma=1 / 10e9)
    assert costmodel.choose(8, 16, params) == "recursive_doubling"
    assert costmodel.choose(256 << 20, 16, params) in ("ring", "rabenseifner")
    # ring's latency term grows linearly with P, Rabenseifner's logarithmically
    assert predict("ring", 1 << 10, 1024, params) > predict("rabenseifner", 1 << 10, 1024, params)


def test_paper_prediction_at_scale():
    """1 GiB ring all-reduce over 1024 ranks at 100 Gb/s: bandwidth term ~ 2 n beta = 0.17 s."""
    params = CostParams(alpha=2e-6, beta=1 / (100e9 / 8), gamma=1 / 50e9)
    n, P = 1 << 30, 1024
    t = predict("ring", n, P, params)
    expected = 2 * 1023 * 2e-6 + 2 * 1023 / 1024 * n / 12.5e9 + 1023 / 1024 * n / 50e9
    assert t == pytest.approx(expected)
    assert 0.17 < t < 0.2


def test_hierarchical_with_ranks_per_node():
    params = CostParams(alpha=2e-6, beta=1 / 12.5e9, gamma=1 / 50e9, alpha_intra=5e-7, beta_intra=1 / 100e9)
    n, P, L = 1 << 26, 1024, 8
    intra = math.log2(L) * (2 * 5e-7 + 2 * n / 100e9 + n / 50e9)
    inter = predict("ring", n, P // L, params)
    assert predict("hierarchical", n, P, params, ranks_per_node=L) == pytest.approx(intra + inter)
    with pytest.raises(UserError, match="not a multiple"):
        predict("hierarchical", n, 10, params, ranks_per_node=4)


def test_unknown_algorithm_and_bad_input():
    with pytest.raises(UserError, match="no model"):
        predict("gossip", 8, 4)
    with pytest.raises(UserError):
        predict("ring", -1, 4)


def test_fit_recovers_known_parameters():
    alpha, beta, gamma = 3e-6, 1 / 7e9, 1 / 20e9
    sizes = [4 * 4 ** k for k in range(12)]
    noisy = [(alpha + n * beta) * (1 + 0.01 * (-1) ** k) for k, n in enumerate(sizes)]
    a, b = fit_alpha_beta(sizes, noisy)
    assert a == pytest.approx(alpha, rel=0.05) and b == pytest.approx(beta, rel=0.05)
    g = fit_gamma(sizes[4:], [n * gamma for n in sizes[4:]])
    assert g == pytest.approx(gamma, rel=1e-9)
    with pytest.raises(UserError):
        fit_alpha_beta([64], [1e-6])


def test_params_round_trip(tmp_path):
    params = CostParams(alpha=1e-6, beta=2e-10, gamma=3e-10)
    costmodel.save_params(tmp_path / "c.json", params, world_size=2)
    assert costmodel.load_params(tmp_path / "c.json") == params
    with pytest.raises(UserError, match="not found"):
        costmodel.load_params(tmp_path / "missing.json")
