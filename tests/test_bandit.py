"""The sliding-window UCB bandit (strategies/bandit.py) on synthetic rewards: it finds the best arm of a stationary
problem, follows a switch of the best arm, and depends on its history alone."""
import numpy as np
import pytest

from legendfl.strategies.bandit import SlidingWindowUCB


def _play(bandit: SlidingWindowUCB, means_at, steps: int, seed: int) -> list[int]:
    gen = np.random.default_rng(seed)
    chosen = []
    for t in range(steps):
        arm = bandit.select()
        reward = float(np.clip(means_at(t)[arm] + gen.normal(0, 0.1), 0, 1))
        bandit.update(arm, reward)
        chosen.append(arm)
    return chosen


def test_a_stationary_problem_converges_to_the_best_arm():
    means = [0.2, 0.5, 0.8, 0.45]
    chosen = _play(SlidingWindowUCB(4, window=50), lambda t: means, 400, seed=0)
    assert chosen[:4] == [0, 1, 2, 3]  # every arm once, in order
    last = np.bincount(chosen[-100:], minlength=4)
    assert last.argmax() == 2 and last[2] >= 50, last  # the window's price: it keeps exploring (about 60% here)


def test_after_a_switch_the_window_follows_the_new_best_arm():
    def means_at(t):  # arm 2 is best, then arm 0 (a power mode re-drawn)
        return [0.2, 0.5, 0.8] if t < 300 else [0.9, 0.5, 0.3]

    chosen = _play(SlidingWindowUCB(3, window=40), means_at, 400, seed=1)
    assert chosen[250:300].count(2) >= 30  # before the switch it plays the old best
    assert chosen[-50:].count(0) >= 35  # and after it the new one


def test_the_choice_depends_on_the_history_alone_and_the_window_is_what_is_kept():
    a, b = SlidingWindowUCB(3, window=5), SlidingWindowUCB(3, window=5)
    for arm, reward in [(0, 0.1), (1, 0.9), (2, 0.5), (1, 0.8), (0, 0.2), (2, 0.4), (1, 1.0)]:
        a.update(arm, reward)
        b.update(arm, reward)
    assert a.select() == b.select() and len(a.history) == 5 and a.pulls == 7
    counts, means = a.statistics()
    assert counts == [1, 2, 2] and means[1] == pytest.approx(0.9)
    tie = SlidingWindowUCB(2, window=4, history=[(0, 0.5), (1, 0.5)], pulls=2)
    assert tie.select() == 0  # ties go to the lower index


@pytest.mark.parametrize("kwargs,field", [({"num_arms": 0}, "num_arms"), ({"num_arms": 2, "window": 0}, "window"),
                                          ({"num_arms": 2, "xi": 0.5}, "xi"), ({"num_arms": True}, "num_arms")])
def test_bad_options_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SlidingWindowUCB(**kwargs)


def test_a_reward_outside_zero_one_or_an_unknown_arm_is_refused():
    bandit = SlidingWindowUCB(2)
    with pytest.raises(ValueError, match="reward"):
        bandit.update(0, 1.5)
    with pytest.raises(ValueError, match="arm"):
        bandit.update(2, 0.5)
