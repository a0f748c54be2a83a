"""pytest plugin (entry point ``pytest11``): the ``polymodal_check`` fixture.

Loaded by pytest wherever polymodal is installed, so it imports nothing heavy until a test asks
for the fixture::

    def test_my_adapter(polymodal_check):
        polymodal_check(MyAdapter, {"channels": 4})
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def polymodal_check() -> Any:
    """:func:`polymodal.plugin.check_component`, for component conformance tests."""
    from ._testing import check_component

    return check_component
