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


def test_fit_two_slopes_recovers_regimes_and_threshold():
    g_in, g_out = 1 / 30e9, 1 / 8e9
    ws = [2 * 4 ** k * 1024 for k in range(3, 10)]                  # 128 KiB .. 512 MiB working sets
    cache = 16 << 20
    times = [x * (g_in if x <= cache else g_out) * (1 + 0.01 * (-1) ** k) for k, x in enumerate(ws)]
    s_in, s_out, thr = costmodel.fit_two_slopes(ws, times)
    assert s_in == pytest.approx(g_in, rel=0.02) and s_out == pytest.approx(g_out, rel=0.02)
    assert 8 << 20 < thr < 32 << 20                                  # between the sizes either side
    # a given threshold splits there; one regime only -> both slopes equal, threshold inf
    s_in2, s_out2, thr2 = costmodel.fit_two_slopes(ws, times, threshold=cache)
    assert (s_in2, s_out2, thr2) == (pytest.approx(s_in), pytest.approx(s_out), cache)
    one = costmodel.fit_two_slopes(ws, [x * g_in for x in ws])
    assert one[0] == pytest.approx(g_in) and one[2] == math.inf


def test_size_dependent_beta_gamma():
    p = CostParams(alpha=1e-6, beta=1e-10, gamma=1e-11, beta_large=4e-10, gamma_large=5e-11, cache_bytes=16 << 20)
    small, large = 4 << 20, 16 << 20                                 # working sets 8 MiB and 32 MiB
    assert predict("ring", small, 2, p) == pytest.approx(2 * 1e-6 + small * 1e-10 + small / 2 * 1e-11)
    assert predict("ring", large, 2, p) == pytest.approx(2 * 1e-6 + large * 4e-10 + large / 2 * 5e-11)
    plain = CostParams(alpha=1e-6, beta=1e-10, gamma=1e-11)
    assert predict("recursive_doubling", large, 4, plain) == pytest.approx(2 * (1e-6 + large * 1.1e-10))


def test_calibration_fit_and_world_size(tmp_path):
    from hpclm.bench.calibrate import fit
    c, overhead, beta, gamma, beta_l, gamma_l = 12e-6, 8e-6, 1 / 10e9, 1 / 30e9, 1 / 4e9, 1 / 8e9
    sizes = [4, 64, 1024, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    small_step = 5e-6
    big = [n for n in sizes if n >= 64 << 10]
    large = lambda n: 2 * n > 16 << 20  # noqa: E731
    step = [small_step if n <= 1024 else
            c + n * (beta_l if large(n) else beta) + n * (gamma_l if large(n) else gamma) for n in sizes]
    call = [small_step + overhead] * 3                              # per-step time of small all-reduces
    reduce_times = [n * (gamma_l if large(n) else gamma) for n in big]
    p = fit(sizes, step, call, big, reduce_times)
    assert p.alpha == pytest.approx(c + overhead, rel=1e-6)
    assert (p.beta, p.beta_large) == (pytest.approx(beta), pytest.approx(beta_l))
    assert (p.gamma, p.gamma_large) == (pytest.approx(gamma), pytest.approx(gamma_l))
    assert 8 << 20 < p.cache_bytes < 32 << 20
    costmodel.save_params(tmp_path / "c.json", p, world_size=2)
    assert costmodel.load_params(tmp_path / "c.json", world_size=2) == p
    with pytest.raises(UserError, match="P=2"):
        costmodel.load_params(tmp_path / "c.json", world_size=4)
