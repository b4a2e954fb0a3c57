"""The benchmark's two floors: pure Python, so they run on every OS (the rest is Linux-only)."""

from __future__ import annotations

from portio.bench import micro


def test_the_floors_order_themselves() -> None:
    """The handler alone must be cheaper than the handler plus the API's objects."""
    handler = micro._echo_handler_floor(0.2)
    objects = micro._echo_api_objects_floor(0.2)
    assert handler > objects > 0
