"""Lambda's own log lines around each invocation: `START`, `END` and `REPORT`, byte for byte as
AWS Lambda writes them to CloudWatch (and as `aws lambda invoke --log-type Tail` shows them),
so tools that parse them (CloudWatch Logs Insights-style queries, log shippers) work unchanged:

    START RequestId: <id> Version: $LATEST   (or the published version's number)
    END RequestId: <id>
    REPORT RequestId: <id>\\tDuration: 12.34 ms\\tBilled Duration: 13 ms\\tMemory Size: 128 MB\\t
        Max Memory Used: 45 MB\\t[Init Duration: 123.45 ms\\t][Status: timeout\\t]

(one line). Every field of REPORT is followed by a tab, the last one too, as on Lambda; Duration
has two decimals and Billed Duration is it rounded up to the millisecond (Lambda's billing
granularity since December 2020); Init Duration only on a cold start (the instance's first
invocation: the time from starting the runtime to its READY); an invocation that timed out or
whose runtime died says `Status: timeout` or `Status: error` and its `Error Type`, as Lambda's
REPORT does.

The worker writes them (sora.worker.logs.FunctionLog.begin/end), never the function: a line the
function prints that looks like one is only a line of its own invocation's output.
"""
from __future__ import annotations

import math

VERSION = b"$LATEST"   # a published version's worker passes its number


def start_line(request_id: bytes, version: bytes = VERSION) -> bytes:
    return b"START RequestId: %s Version: %s" % (request_id, version)


def end_lines(request_id: bytes, duration_ms: float, memory_mb: int, max_used_mb: int,
              init_ms: float | None = None, status: bytes = b"ok",
              error_type: str | None = None) -> list[bytes]:
    """END and REPORT of one invocation."""
    report = b"REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %d ms\t" \
             b"Memory Size: %d MB\tMax Memory Used: %d MB\t" % (
                 request_id, duration_ms, math.ceil(round(duration_ms, 2)), memory_mb,
                 max_used_mb)
    if init_ms is not None:
        report += b"Init Duration: %.2f ms\t" % init_ms
    if status == b"timeout":
        report += b"Status: timeout\t"
    elif status == b"crashed":
        report += b"Status: error\tError Type: %s\t" % (error_type or "Runtime.ExitError").encode()
    return [b"END RequestId: %s" % request_id, report]
