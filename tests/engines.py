"""A Redis server of a test's own, for tests that stop it (the shared one is in :mod:`tests.services`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .services import binary, free_port, wait_for_port


class RedisServer:
    """A throwaway ``redis-server`` without persistence."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same port)."""
        self.process = subprocess.Popen(
            [binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
