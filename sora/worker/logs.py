"""The per-function log: what the function printed, each line tied to its invocation."""
from __future__ import annotations

import base64
import os
import time
from typing import Callable

from ..protocol import LOG_TAIL_BYTES
from ..store.recorder import RecordSender


class FunctionLog:
    """Appends `<UTC time> <request id> <stream> <line>` lines to `<stateDir>/logs/<name>.log`
    and hands them to the store, where each invocation's record keeps its own lines.

    Writes are buffered and flushed once per worker loop turn, off the invocation path."""

    def __init__(self, state_dir: str, function: str, records: RecordSender | None = None,
                 redact: Callable[[bytes], bytes] | None = None):
        directory = os.path.join(state_dir, "logs")
        os.makedirs(directory, exist_ok=True)
        self.function = function
        self.path = os.path.join(directory, f"{function}.log")
        self.records = records
        self._file = open(self.path, "ab", buffering=1 << 16)
        self._tails: dict[str, list[bytes]] = {}
        self.redact = redact   # masks the function's secret values (sora.isolation.secrets)

    def want_tail(self, request_id: str) -> None:
        """Keep this invocation's lines for `tail()` (the Invoke API's LogType: Tail)."""
        self._tails[request_id] = []

    def tail(self, request_id: str) -> bytes:
        """Base64 of the last 4 KB the invocation printed, as Lambda's X-Amz-Log-Result."""
        text = b"".join(self._tails.pop(request_id, []))
        return base64.b64encode(text[-LOG_TAIL_BYTES:])

    def write(self, request_id: str, stream: str, lines: list[bytes]) -> None:
        lines = [line.rstrip(b"\r") for line in lines]
        if self.redact is not None:
            lines = [self.redact(line) for line in lines]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()).encode()
        head = b"%s %s %s " % (stamp, request_id.encode(), stream.encode())
        self._file.write(b"".join(head + line + b"\n" for line in lines))
        if request_id in self._tails:
            self._tails[request_id].extend(line + b"\n" for line in lines)
        if self.records is not None:
            self.records.lines(self.function, request_id, stream, lines)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
