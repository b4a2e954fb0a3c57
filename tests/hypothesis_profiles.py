"""Hypothesis profiles for every portio test: ``ci`` (the default run) and ``nightly``.

Pick one with ``HYPOTHESIS_PROFILE=nightly``.  A conftest calls :func:`load` once; registering
twice is harmless (the last registration of a name wins, and both register the same values).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: ``deadline=None``: an example's time is dominated by the kernel and the machine's load, not by
#: portio, so a per-example deadline would only make the suite flaky on a busy CI runner.
_COMMON = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load() -> str:
    """Register ``ci`` and ``nightly`` and load the one named by ``$HYPOTHESIS_PROFILE``."""
    settings.register_profile("ci", _COMMON, max_examples=25, stateful_step_count=30)
    settings.register_profile("nightly", _COMMON, max_examples=500, stateful_step_count=100)
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    settings.load_profile(name)
    return name
