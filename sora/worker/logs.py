"""The per-function log: what the function printed, each line tied to its invocation."""
from __future__ import annotations

import os
import time


class FunctionLog:
    """Appends `<UTC time> <request id> <stream> <line>` lines to `<stateDir>/logs/<name>.log`.

    Writes are buffered and flushed once per worker loop turn, off the invocation path."""

    def __init__(self, state_dir: str, function: str):
        directory = os.path.join(state_dir, "logs")
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{function}.log")
        self._file = open(self.path, "ab", buffering=1 << 16)

    def write(self, request_id: str, stream: str, lines: list[bytes]) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()).encode()
        head = b"%s %s %s " % (stamp, request_id.encode(), stream.encode())
        self._file.write(b"".join(head + line.rstrip(b"\r") + b"\n" for line in lines))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
