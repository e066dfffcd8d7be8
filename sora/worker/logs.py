"""The per-function log: what the function printed, each line tied to its invocation.

Nothing a function prints may fill the disk:
- the log file is rotated by size, by the standard library's `RotatingFileHandler` (its rename
  chain `<name>.log.1` ... `.<keepFiles>`, the oldest removed), used for its files only: lines
  are written as bytes in one buffered write per loop turn, not as logging records;
- each invocation's lines sent to the records store are capped (`records.
  maxLogBytesPerInvocation`): past it one marker line says the rest was not stored;
- while the state dir is low on free space (`minFreeDiskMB`) the file is not written at all.

Each invocation's lines open with Lambda's `START` line and close with its `END` and `REPORT`
(sora.worker.report), written by the worker on their own stream, `platform`: `START` just
before the invocation's first line (so it precedes them even when the runtime has printed them
before the worker read its previous answer), `END` and `REPORT` once its end markers have been
read. They are kept whole whatever the invocation printed (the per-invocation cap does not
apply to them).
"""
from __future__ import annotations

import base64
import logging
import logging.handlers
import os
import re
import time
from typing import Callable

from ..config import LogsConfig, RecordsConfig
from ..protocol import LOG_TAIL_BYTES
from ..store.free_space import FreeSpace
from ..store.recorder import RecordSender

log = logging.getLogger("sora.worker")
# Request ids whose stored bytes are counted: the oldest is forgotten past this many (lines
# of an invocation come within moments of each other; a forgotten one starts counting anew).
TRACKED_INVOCATIONS = 4096
# Lines printed outside any invocation (at load, or by a timer while idle) are stored under "-".
NO_INVOCATION = "-"
# The file is written at most this often (the worker's poll waits no longer while lines wait):
# with a START, END and REPORT line for every invocation, a write per loop turn was one more
# system call per invocation at concurrency 1 (strace -c of the worker: 3.5 -> 4.7 writes per
# request); lines reach the file at most 50 ms later instead.
FILE_FLUSH_INTERVAL = 0.05
# The stream of the lines Sora writes about an invocation (START, END, REPORT), as Lambda's
# Telemetry API names them; a function's own output is stdout or stderr.
PLATFORM = "platform"
# What a terminal acts on rather than shows: C0 controls but tab, DEL, and the C1 controls as
# UTF-8 (U+0080-U+009F, such as the 8-bit CSI). In a function's line, a carriage return and
# the text of a platform line after it showed as that platform line in `sora logs` or `tail`
# of the file (an END or REPORT the worker never wrote, over the `stdout` that tells them
# apart), and escape sequences could rewrite the operator's screen. They are shown as \xNN.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\xc2[\x80-\x9f]")
# Looked for first with one character class (~0.75 us an 80-byte line, measured; the pattern
# above with its alternative takes ~1.7 us), which most lines pass.
_MAYBE_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f\xc2]")


def _escaped(match: re.Match) -> bytes:
    return b"".join(b"\\x%02x" % byte for byte in match.group())


def _visible(line: bytes) -> bytes:
    return _CONTROL.sub(_escaped, line) if _MAYBE_CONTROL.search(line) else line


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler's files and rotation, over a binary file that FunctionLog writes in
    batches (its `emit` is never used)."""

    def _open(self):
        return open(self.baseFilename, "ab", buffering=1 << 16)


class FunctionLog:
    """Appends `<UTC time> <request id> <stream> <line>` lines to `<stateDir>/logs/<name>.log`
    and hands them to the store, where each invocation's record keeps its own lines.

    Writes are buffered and flushed at the end of a worker loop turn, off the invocation path,
    at most every FILE_FLUSH_INTERVAL (`flush`).

    Rotation with several workers of one function (`workers: N`), which append to the same
    file: before every `max_file / 16` bytes a worker writes, it compares the file it writes
    with the path; if another worker has rotated it, it reopens the path, else it rotates if
    the next sixteenth could take the file past `max_file`. One writer never passes the size;
    with several, a file can pass it by what the others wrote since their last check and
    still held in their buffers: at most an eighth each (measured with two: +5 %)."""

    def __init__(self, state_dir: str, function: str, records: RecordSender | None = None,
                 redact: Callable[[bytes], bytes] | None = None,
                 logs: LogsConfig = LogsConfig(), stored_per_invocation: int =
                 RecordsConfig.maxLogBytesPerInvocation, min_free_mb: int = 0):
        directory = os.path.join(state_dir, "logs")
        os.makedirs(directory, exist_ok=True)
        self.function = function
        self.path = os.path.join(directory, f"{function}.log")
        self.records = records
        self.max_file = logs.maxFileMB << 20
        self._file = _RotatingFile(self.path, maxBytes=self.max_file,
                                   backupCount=logs.keepFiles)
        self._check_every = max(1 << 16, self.max_file // 16)
        self._unchecked = self._file.stream.tell()
        self._tails: dict[str, list[bytes]] = {}
        self.redact = redact   # masks the function's secret values (sora.isolation.secrets)
        self.stored_per_invocation = stored_per_invocation
        self._stored: dict[str, int] = {}   # request id -> bytes sent to the store (-1: cut)
        self._next_complaint = 0.0
        # Request id -> its START line, until the invocation's first line is written.
        self._unstarted: dict[str, bytes] = {}
        self._stamp_second, self._stamp_text = -1, b""
        self._unflushed = False   # bytes wait in the file's buffer
        self._flush_at = 0.0   # monotonic time the next write of the file is due
        self.free_space = FreeSpace(state_dir, min_free_mb << 20,
                                    f"{function}'s log file is not written")

    def want_tail(self, request_id: str) -> None:
        """Keep this invocation's lines for `tail()` (the Invoke API's LogType: Tail)."""
        self._tails[request_id] = []

    def tail(self, request_id: str) -> bytes:
        """Base64 of the last 4 KB the invocation printed, as Lambda's X-Amz-Log-Result."""
        text = b"".join(self._tails.pop(request_id, []))
        return base64.b64encode(text[-LOG_TAIL_BYTES:])

    def begin(self, request_id: str, start_line: bytes) -> None:
        """An invocation was handed to an instance: its START line goes before the first
        line written for it."""
        if len(self._unstarted) >= TRACKED_INVOCATIONS:
            del self._unstarted[next(iter(self._unstarted))]
        self._unstarted[request_id] = start_line

    def end(self, request_id: str, lines: list[bytes]) -> None:
        """An invocation's END and REPORT (and START, if it printed nothing)."""
        start = self._unstarted.pop(request_id, None)
        self._write(request_id, PLATFORM, lines if start is None else [start, *lines])

    def write(self, request_id: str, stream: str, lines: list[bytes]) -> None:
        if request_id in self._unstarted:
            self._write(request_id, PLATFORM, [self._unstarted.pop(request_id)])
        self._write(request_id, stream, lines)

    def _write(self, request_id: str, stream: str, lines: list[bytes]) -> None:
        if stream != PLATFORM:   # (Sora's own lines hold ids and figures only)
            lines = [_visible(line.rstrip(b"\r")) for line in lines]
            if self.redact is not None:
                lines = [self.redact(line) for line in lines]
        if not self.free_space.low():
            head = b"%s %s %s " % (self._stamp(), request_id.encode(), stream.encode())
            try:
                # In pieces of at most a check's worth: one drain of a busy pipe can hold more
                # than a whole file.
                piece: list[bytes] = []
                size = 0
                for line in lines:
                    piece.append(head + line + b"\n")
                    size += len(piece[-1])
                    if size >= self._check_every:
                        self._append(b"".join(piece))
                        piece, size = [], 0
                if piece:
                    self._append(b"".join(piece))
            except OSError as exc:
                self._failed(exc)
        if request_id in self._tails:
            self._tails[request_id].extend(line + b"\n" for line in lines)
        if self.records is not None:
            if stream != PLATFORM:
                lines = self._within_allowance(request_id, lines)
            if lines:
                self.records.lines(self.function, request_id, stream, lines)

    def _stamp(self) -> bytes:
        """The current second in UTC, formatted once a second (strftime and gmtime cost
        ~1.5 µs, on every write: a platform line or more per invocation)."""
        now = int(time.time())
        if now != self._stamp_second:
            self._stamp_second = now
            self._stamp_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
        return self._stamp_text

    def _within_allowance(self, request_id: str, lines: list[bytes]) -> list[bytes]:
        """The lines the store may still take for this invocation, and the marker line where
        its allowance ends (then nothing more)."""
        used = self._stored.get(request_id)
        if used is None:
            used = 0
            if request_id != NO_INVOCATION:
                # An invocation printed: lines outside invocations get a fresh allowance.
                self._stored.pop(NO_INVOCATION, None)
            if len(self._stored) >= TRACKED_INVOCATIONS:
                del self._stored[next(iter(self._stored))]
        elif used < 0:
            return []
        size = sum(map(len, lines)) + len(lines)
        if used + size <= self.stored_per_invocation:
            self._stored[request_id] = used + size
            return lines
        kept = []
        for line in lines:
            used += len(line) + 1
            if used > self.stored_per_invocation:
                break
            kept.append(line)
        kept.append(b"[sora: more than %d bytes of log lines; the rest of this invocation's "
                    b"lines are not stored (records.maxLogBytesPerInvocation); the function's "
                    b"log file has them]" % self.stored_per_invocation)
        self._stored[request_id] = -1
        return kept

    def _append(self, data: bytes) -> None:
        if self._unchecked + len(data) >= self._check_every:
            self._rotate_if_due(len(data))
        self._file.stream.write(data)
        self._unchecked += len(data)
        self._unflushed = True

    def _rotate_if_due(self, incoming: int) -> None:
        """Before `incoming` bytes are written: follow the path if another worker rotated
        the file, or rotate it if they (or the check's worth that may follow before the next
        check) could take it past its size."""
        stream = self._file.stream
        stream.flush()
        self._unchecked = 0
        try:
            mine = os.fstat(stream.fileno())
            current = os.stat(self.path)
        except FileNotFoundError:   # removed by hand: start a new file
            current = None
        if current is None or (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
            # Another worker of this function rotated it (or it was removed): follow the path.
            stream.close()
            self._file.stream = self._file._open()
        elif mine.st_size and mine.st_size + max(incoming, self._check_every) > self.max_file:
            # (until the next check this writer may add a check's worth)
            self._file.doRollover()

    def _failed(self, exc: OSError) -> None:
        """A write failed (the disk filled faster than the free-space check saw): the lines
        are lost, the worker goes on."""
        now = time.monotonic()
        if now >= self._next_complaint:
            self._next_complaint = now + 60
            log.error("%s: could not write its log file: %s", self.function, exc)

    def flush(self, now: float | None = None) -> float | None:
        """Write what the file's buffer holds, unless the last write was less than
        FILE_FLUSH_INTERVAL ago (`now`: monotonic; None writes at once). Returns the seconds
        until a write is due while lines wait, else None."""
        if not self._unflushed:
            return None
        if now is not None and now < self._flush_at:
            return self._flush_at - now
        self._unflushed = False
        self._flush_at = (now or time.monotonic()) + FILE_FLUSH_INTERVAL
        try:
            self._file.stream.flush()
        except OSError as exc:
            self._failed(exc)
        return None

    def close(self) -> None:
        self._file.close()
