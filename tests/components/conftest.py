"""Fixtures for the built-in component tests; helpers live in component_helpers.py."""

import pytest


@pytest.fixture
def short_smoke(track_variant):
    """The smoke track cut to 2 steps without warmup, one checkpoint at the end."""
    return track_variant(train={"steps": 2, "untimed_warmup_steps": 0, "checkpoint_every": 2})
