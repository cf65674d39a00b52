"""Say at the top of the run why the kind e2e tests will be skipped (not only with -rs)."""

from __future__ import annotations

import pytest
from kind_e2e_support import missing_tools


def pytest_report_header(config: pytest.Config) -> str | None:
    reason = missing_tools()
    return None if reason is None else f"kind e2e: will be skipped: {reason}"
