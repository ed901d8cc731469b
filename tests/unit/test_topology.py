"""Gossip topologies (hpclm.parallel.topology): doubly stochastic for P = 1..16, peers consistent
with the matrix, and gossip averaging alone converging to the mean at the rate |lambda_2| of the
closed form of each topology's spectrum."""
import numpy as np
import pytest

from hpclm.errors import UserError
from hpclm.parallel.topology import (TOPOLOGY_NAMES, build_topology, exp2_offsets, second_eigenvalue,
                                     spectral_gap, torus_shape)


@pytest.mark.parametrize("name", TOPOLOGY_NAMES)
@pytest.mark.parametrize("P", range(1, 17))
def test_doubly_stochastic_and_peers(name, P):
    topo = build_topology(name, P)
    for step in range(4):
        W = topo.matrix(step)
        assert W.shape == (P, P) and (W >= 0).all()
        assert np.allclose(W.sum(axis=0), 1.0, atol=1e-14) and np.allclose(W.sum(axis=1), 1.0, atol=1e-14)
        for i in range(P):
            self_w, inbound, outbound = topo.peers(i, step)
            row = np.zeros(P)
            row[i] = self_w
            for j, w in inbound:
                row[j] = w
            assert np.array_equal(row, W[i])
            assert sorted(outbound) == [k for k in range(P) if k != i and W[k, i] > 0]
    assert 0.0 <= spectral_gap(topo.matrix(0)) <= 1.0 + 1e-12


def closed_form_lambda2(name, P):
    """|lambda_2| from each topology's spectrum (circulant / Kronecker-sum eigenvalues)."""
    if name == "fully_connected":
        return 0.0
    if name == "ring":                        # P >= 3: (1 + 2 cos(2 pi k / P)) / 3
        return max(abs(1 + 2 * np.cos(2 * np.pi * k / P)) / 3 for k in range(1, P))
    if name == "torus":                       # rows, cols >= 3: (1 + 2cos a + 2cos b) / 5
        r, c = torus_shape(P)
        return max(abs(1 + 2 * np.cos(2 * np.pi * a / r) + 2 * np.cos(2 * np.pi * b / c)) / 5
                   for a in range(r) for b in range(c) if (a, b) != (0, 0))
    if name == "exp2":                        # circulant: (1 + sum_k w^(j 2^k)) / (m + 1)
        offs = exp2_offsets(P)
        return max(abs(1 + sum(np.exp(2j * np.pi * k * o / P) for o in offs)) / (len(offs) + 1) for k in range(1, P))
    if name == "star":                        # MH star: eigenvalues 1, 0 and 1 - 1/P (P - 2 times)
        return 1 - 1 / P


@pytest.mark.parametrize("name, P", [("ring", 5), ("ring", 8), ("torus", 9), ("torus", 12), ("exp2", 6),
                                     ("exp2", 8), ("star", 6), ("fully_connected", 7)])
def test_averaging_converges_at_rate_of_lambda2(name, P):
    W = build_topology(name, P).matrix()
    lam = closed_form_lambda2(name, P)
    assert second_eigenvalue(W) == pytest.approx(lam, abs=1e-12)
    x0 = np.random.default_rng(P).standard_normal((P, 3))     # (P, n): each rank's model
    mean = x0.mean(axis=0)
    x, err0 = x0.copy(), np.linalg.norm(x0 - mean)
    steps = 12
    for t in range(1, steps + 1):
        x = W @ x
        assert np.allclose(x.mean(axis=0), mean, atol=1e-13)                 # the mean is conserved
        assert np.linalg.norm(x - mean) <= lam ** t * err0 * (1 + 1e-9) + 1e-13   # normal W: the bound
    if lam > 0:                               # and the bound is attained along the slowest eigenvector
        rate = (np.linalg.norm(x - mean) / err0) ** (1 / steps)
        assert rate == pytest.approx(lam, rel=0.1)
    else:
        assert np.allclose(x, mean, atol=1e-13)


@pytest.mark.parametrize("P", [2, 4, 8, 16])
def test_one_peer_exp_averages_exactly_in_log2_P_steps(P):
    topo = build_topology("one_peer_exp", P)
    x = np.random.default_rng(0).standard_normal((P, 2))
    mean = x.mean(axis=0)
    m = len(exp2_offsets(P))
    for t in range(m):
        assert len(topo.peers(0, t)[1]) == 1
        x = topo.matrix(t) @ x
    assert m == int(np.log2(P)) and np.allclose(x, mean, atol=1e-13)


def test_torus_is_the_most_square_grid():
    assert [torus_shape(P) for P in (1, 4, 6, 7, 12, 16)] == [(1, 1), (2, 2), (2, 3), (1, 7), (3, 4), (4, 4)]


def test_unknown_topology():
    with pytest.raises(UserError, match="gossip.topology"):
        build_topology("hypercube", 4)
