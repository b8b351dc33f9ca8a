"""
Tests for nymprov, run with ``python -m twisted.trial tests``.
"""

from hypothesis import HealthCheck, settings

# The same examples on every run and no wall-clock deadline: CI machines are
# shared and slow, and a flaky property test is worse than none.
settings.register_profile(
    "nymprov",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("nymprov")
