"""The peer of bench/triggers.py: serverless-offline firing a schedule every second
(bench/peer/serverless-schedule.yml), each firing's lateness after its second.

File triggers have no peer here: serverless-offline has no S3 or file events, and the S3
plugins (serverless-s3-local) fire on objects PUT through their own S3 server, not on files
dropped into a folder."""
from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path

from common import PEER, PEER_ENV, free_port, peer_binary, stop

FILE_PEER = ("serverless-offline has no S3 or file events (serverless-s3-local fires on "
             "objects PUT through its S3 server, not on files dropped in a folder)")


def peer_schedule(tmp: Path, firings: int) -> tuple[list[float] | None, str]:
    """(lateness in ms of each firing after its whole second, what ran), or (None, why not).
    node-schedule fires on whole seconds, so a firing's due time is the second it ran in
    (lateness stays well under a second)."""
    binary = peer_binary()
    if binary is None:
        return None, "npm install of bench/peer failed"
    tmp.mkdir(parents=True, exist_ok=True)
    ticks = tmp / "ticks.txt"
    ticks.touch()
    log = open(tmp / "peer.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "offline", "start", "--config", "serverless-schedule.yml",
         "--httpPort", str(free_port()), "--lambdaPort", str(free_port())], cwd=PEER,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, TICKS_FILE=str(ticks), **PEER_ENV))
    try:
        # The first firing is its cold start (the handler's module loaded): left out, as
        # Sora's instances are started before its first firing.
        deadline = time.monotonic() + firings + 60
        while len(ticks.read_text().split()) < firings + 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                return None, (f"serverless-offline's schedule did not fire {firings} times "
                              f"(see its log: {(tmp / 'peer.log').read_bytes()[-500:]!r})")
            time.sleep(0.5)
    finally:
        stop(proc)
        log.close()
    ran = [float(t) for t in ticks.read_text().split()][1:firings + 1]
    return ([t - math.floor(t / 1000) * 1000 for t in ran],
            "serverless-offline 13.9.0's own `schedule` (node-schedule), every second, "
            "in-process, nothing stored")
