"""Ranking: ties within the noise level go to the lower inference latency, and the report shows that latency."""

from __future__ import annotations

from embadvisor.advisor.rank import Candidate, choose


def _cand(method: str, value: float, fresh: list[float], trial_ms: float, fresh_ms: list[float]) -> Candidate:
    return Candidate(trial=0, method=method, use=1.0, fixed={}, value=value, latency_ms=trial_ms,
                     train_bytes=100, serve_bytes=100, params={}, fresh=fresh, fresh_latency=fresh_ms)


def test_ties_go_to_the_lower_re_measured_latency_and_the_report_shows_it() -> None:
    # hash's trial ran on a quiet machine (34 ms) but its re-training runs measured 45 ms; robe's 38 ms
    hash_ = _cand("hash", 0.701, [0.729, 0.730], trial_ms=34.2, fresh_ms=[45.0, 44.0])
    robe = _cand("robe", 0.699, [0.727, 0.726], trial_ms=40.9, fresh_ms=[38.0, 38.4])
    win, eps, why = choose([hash_, robe], stated_epsilon=0.01)
    assert win is robe and eps >= 0.01
    # the table's latency column is the one that decided, not the trial's
    assert robe.to_dict()["latency_ms"] < hash_.to_dict()["latency_ms"]
    assert hash_.to_dict()["trial_latency_ms"] == 34.2
    assert "38.2 ms" in why and "44.5 ms" in why


def test_a_clear_winner_is_not_decided_by_latency() -> None:
    slow_good = _cand("qr", 0.75, [0.76, 0.76], trial_ms=90.0, fresh_ms=[90.0])
    fast_bad = _cand("hash", 0.70, [0.70, 0.70], trial_ms=10.0, fresh_ms=[10.0])
    win, _, why = choose([slow_good, fast_bad], stated_epsilon=0.005)
    assert win is slow_good and "ahead of the next candidate" in why


def test_without_re_training_runs_the_trial_latency_ranks() -> None:
    a = _cand("hash", 0.70, [], trial_ms=20.0, fresh_ms=[])
    b = _cand("robe", 0.70, [], trial_ms=15.0, fresh_ms=[])
    win, _, _ = choose([a, b], stated_epsilon=0.01)
    assert win is b and b.to_dict()["latency_ms"] == 15.0


def test_candidates_serving_the_same_module_are_not_split_by_timing_noise() -> None:
    # the same robe module trained at two learning rates: its latency differs only by noise (measured 4.3
    # and 5.3 ms in one run on a loaded machine); the better metric wins whichever measured faster
    a = Candidate(trial=0, method="robe", use=1.0, fixed={}, value=0.68, latency_ms=5.3, train_bytes=100,
                  serve_bytes=100, params={"num_weights": 12704}, fresh=[0.6726, 0.6863], fresh_latency=[5.3, 5.3],
                  lr=0.001)
    b = Candidate(trial=1, method="robe", use=1.0, fixed={}, value=0.68, latency_ms=4.3, train_bytes=100,
                  serve_bytes=100, params={"num_weights": 12704}, fresh=[0.6739, 0.6765], fresh_latency=[4.3, 4.3],
                  lr=0.0018)
    for order in ([a, b], [b, a]):
        win, _, _ = choose(order, stated_epsilon=0.001)
        assert win is a


def test_latencies_within_the_measured_noise_do_not_decide() -> None:
    # robe is 8% faster, but its own runs' latencies vary by 10%: not a real difference; the next criterion,
    # training memory, decides for hash
    hash_ = _cand("hash", 0.70, [0.729, 0.731], trial_ms=40.0, fresh_ms=[41.0, 39.0])
    hash_.train_bytes = 90
    robe = _cand("robe", 0.70, [0.730, 0.730], trial_ms=37.0, fresh_ms=[33.3, 40.7])
    win, _, why = choose([robe, hash_], stated_epsilon=0.01)
    assert win is hash_ and "timing noise" in why
