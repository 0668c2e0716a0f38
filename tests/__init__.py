"""Test suite. Hypothesis runs without per-example deadlines: CI machines are shared and
a slow example is not a bug; the property, not the speed, is what these tests check."""

from hypothesis import settings

settings.register_profile("ota", deadline=None)
settings.load_profile("ota")
