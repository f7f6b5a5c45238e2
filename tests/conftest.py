"""
Fixtures shared by the whole test suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The real public feeds: a folder named by $XSOAR_LR_TEST_FEEDS, or the
#: development environment's, beside the checkout. A user's clone usually has
#: neither, so the tests that read them skip.
SHARED_FEEDS = Path(
    os.environ.get("XSOAR_LR_TEST_FEEDS")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "feeds"
)


@pytest.fixture
def shared_feeds() -> Path:
    """
    The folder of real threat feeds, or a skip when it is absent.
    """
    if not SHARED_FEEDS.is_dir():
        pytest.skip(
            f"the shared feeds folder {SHARED_FEEDS} is not present (set "
            "XSOAR_LR_TEST_FEEDS to a folder of feeds to run this test)"
        )
    return SHARED_FEEDS
