"""A background thread that runs one step every so many seconds in the API process, logging (not
raising) a failed step so the next one still runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class PeriodicLoop:
    def __init__(self, name: str, interval: float, step: Callable[[], None], log: logging.Logger) -> None:
        self.interval, self.step, self.log = interval, step, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                self.log.exception("%s: a round failed; trying again in %s s", self._thread.name, self.interval)
            self._stop.wait(self.interval)
