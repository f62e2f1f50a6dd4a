"""What the benchmark scripts share: timing repeated calls, and an embedded service to call."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def embedded_service(data_dir: Path):
    """(settings, app, owner, headers): the service on SQLite in `data_dir`, jobs run inline, one owner."""
    from service.app import create_app
    from service.config import Settings
    from service.db import session_factory
    from service.owners.service import create_owner

    settings = Settings(data_dir=data_dir, executor="inline", secret_key="bench")
    app = create_app(settings)
    with session_factory(settings.resolved_database_url)() as session:
        owner, key = create_owner(session, secret=settings.secret(), name="bench", is_admin=False, actor="bench")
    return settings, app, owner, {"Authorization": f"Bearer {key}"}
