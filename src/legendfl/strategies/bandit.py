"""Sliding-window UCB (Garivier and Moulines, ALT 2011): a multi-armed bandit for rewards that change abruptly.

FedSpine (arXiv 2501.02438) picks each device's pruning ratio and LoRA rank with "an online Multi-Armed Bandit
(MAB) algorithm ... without any prior knowledge of their computing and communication capabilities"; its
abstract names no algorithm. What a device can do changes abruptly in our fleets (power modes re-drawn every
20 rounds, ``fleet/``), so its rewards are piecewise stationary, and a bandit that averages over all of its
history (UCB1) is, in the worst case, held by the arm that was best before a change for a time that grows with
how long it had been best. Two standard answers: discounted UCB (old rewards weigh geometrically less) and
sliding-window UCB (only the last ``W`` pulls count); both have regret of order sqrt(changes x T log T). The
sliding window is used here because its memory is a number of rounds one can set against the fleet's
power-mode period, and because a window of pulls is plain data a checkpoint holds exactly. Its price is more
exploration in a stationary stretch (tests/test_bandit.py: about 60% of pulls on the best of 4 arms with
W = 50, 75% with W = 100). Measured, not assumed: on the synthetic switches of the tests, full-memory UCB
followed the switch as fast, since a new best arm with few pulls keeps a wide bonus; the window matters after
long stationary stretches, which runs of tens of rounds do not have.

The index of arm ``a`` after ``t`` pulls, over the last ``W`` of them (``N_a``: its pulls there, ``mean_a``:
their mean reward, rewards in [0, 1])::

    mean_a + sqrt(xi * log(min(t, W)) / N_a)

An arm without a pull in the window is taken first; ties go to the lower arm index. There is no random
state: the choice is a function of the history alone (so it does not depend on a resume or on the order in
which devices are served).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class SlidingWindowUCB:
    """One device's bandit over ``num_arms`` arms (:meth:`select`, then :meth:`update` with the reward)."""

    num_arms: int
    window: int = 20  # pulls that count (the fleet re-draws power modes every 20 rounds)
    xi: float = 0.6  # exploration; Garivier and Moulines require xi > 1/2 and use 0.6
    history: list[tuple[int, float]] = field(default_factory=list)  # (arm, reward), the last `window` pulls
    pulls: int = 0  # all pulls so far (t)

    def __post_init__(self) -> None:
        for name, minimum in (("num_arms", 1), ("window", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"bandit {name} must be an integer >= {minimum}, got {value!r}")
        if not (isinstance(self.xi, (int, float)) and self.xi > 0.5):
            raise ValueError(f"bandit xi must be a number > 0.5, got {self.xi!r}")

    def statistics(self) -> tuple[list[int], list[float]]:
        """Pulls and mean reward of every arm over the window (mean 0 for an arm without pulls)."""
        counts, sums = [0] * self.num_arms, [0.0] * self.num_arms
        for arm, reward in self.history:
            counts[arm] += 1
            sums[arm] += reward
        return counts, [s / c if c else 0.0 for s, c in zip(sums, counts)]

    def select(self) -> int:
        counts, means = self.statistics()
        for arm, n in enumerate(counts):
            if n == 0:
                return arm
        log_t = math.log(min(self.pulls, self.window))
        index = [m + math.sqrt(self.xi * log_t / n) for m, n in zip(means, counts)]
        return max(range(self.num_arms), key=lambda a: (index[a], -a))

    def update(self, arm: int, reward: float) -> None:
        if isinstance(arm, bool) or not isinstance(arm, int) or not 0 <= arm < self.num_arms:
            raise ValueError(f"arm must be an integer in [0, {self.num_arms - 1}], got {arm!r}")
        if not (isinstance(reward, (int, float)) and 0.0 <= reward <= 1.0):
            raise ValueError(f"reward must be a number in [0, 1], got {reward!r}")
        self.history.append((arm, float(reward)))
        del self.history[:-self.window]
        self.pulls += 1
