"""
Fixtures shared by the whole test suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: The real public feeds of the development environment, beside the checkout.
#: A user's clone has none, so the tests that read them skip.
SHARED_FEEDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "feeds"


@pytest.fixture
def shared_feeds() -> Path:
    """
    The folder of real threat feeds, or a skip when it is absent.
    """
    if not SHARED_FEEDS.is_dir():
        pytest.skip(f"the shared feeds folder {SHARED_FEEDS} is not present")
    return SHARED_FEEDS
