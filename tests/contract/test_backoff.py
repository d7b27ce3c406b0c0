from __future__ import annotations

from blipq.contract.amqp import Backoff


def test_pauses_double_up_to_the_limit_and_start_over_after_a_success() -> None:
    backoff = Backoff()
    assert [backoff.pause_s() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.pause_s() == 0.5
