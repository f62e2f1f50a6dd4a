"""Two requests storing the same bytes at once both succeed and leave one artifact row."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select

from service.artifact_records import record_artifact
from service.db import session_factory
from service.models import Artifact

SHA = "ab" * 32


def test_concurrent_records_of_the_same_artifact_do_not_fail(settings):
    make_session = session_factory(settings.resolved_database_url)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with make_session() as session:
                assert record_artifact(session, sha256=SHA, size=3, kind="upload").sha256 == SHA
                session.commit()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    with make_session() as first:
        record_artifact(first, sha256=SHA, size=3, kind="upload")  # inserted, not yet committed
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)  # the second insert now waits on the first transaction
        first.commit()
    thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    with make_session() as session:
        assert session.scalar(select(func.count()).select_from(Artifact)) == 1
        assert record_artifact(session, sha256=SHA, size=3, kind="upload").kind == "upload"
