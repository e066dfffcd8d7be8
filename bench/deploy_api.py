"""The Lambda management API's times on a real host (issue 17 point 6), driven by boto3:
CreateFunction until `State: Active`, UpdateFunctionCode until `LastUpdateStatus: Successful`
(a rolling switch), DeleteFunction, each the median and maximum of `--rounds`; then one
CreateFunction of a `--big-mb` MB zip (random bytes, stored: no compression helps it).

    .venv/bin/python bench/deploy_api.py [--rounds 10] [--big-mb 45]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration import functions as F  # noqa: E402 - after the path insert above
from tests.integration.test_management_api import ADMIN, ROLE, client, node_zip  # noqa: E402
from tests.support import SoraHost, write_function  # noqa: E402


def timed(call) -> tuple[float, dict]:
    start = time.monotonic()
    answer = call()
    return time.monotonic() - start, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--big-mb", type=int, default=45)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sora-deploy-bench-"))
    folder = write_function(base / "fns", "onfolder", {"index.js": F.ECHO}, name="onfolder")
    host = SoraHost(base, [folder], https=False, api_key=ADMIN, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]}]}})
    host.start()
    try:
        lam = client(host)
        times: dict[str, list[float]] = {"create": [], "update code": [], "delete": []}
        for i in range(args.rounds):
            took, answer = timed(lambda: lam.create_function(
                FunctionName=f"bench-{i}", Runtime="nodejs20.x", Role=ROLE,
                Handler="index.handler", Code={"ZipFile": node_zip("a")}))
            assert answer["State"] == "Active", answer
            times["create"].append(took)
            took, answer = timed(lambda: lam.update_function_code(
                FunctionName=f"bench-{i}", ZipFile=node_zip("b")))
            assert answer["LastUpdateStatus"] == "Successful", answer
            times["update code"].append(took)
            took, _ = timed(lambda: lam.delete_function(FunctionName=f"bench-{i}"))
            times["delete"].append(took)
        for what, samples in times.items():
            print(f"{what:12s} median {statistics.median(samples) * 1000:7.0f} ms   "
                  f"max {max(samples) * 1000:7.0f} ms   ({len(samples)} rounds)")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("index.js", "exports.handler = async () => 'big';")
            archive.writestr(zipfile.ZipInfo("blob.bin"), os.urandom(args.big_mb << 20))
        blob = buffer.getvalue()
        took, answer = timed(lambda: lam.create_function(
            FunctionName="bench-big", Runtime="nodejs20.x", Role=ROLE, Handler="index.handler",
            Code={"ZipFile": blob}))
        print(f"create of a {len(blob) / (1 << 20):.1f} MB zip: {took:.2f} s "
              f"(State {answer['State']})")
    finally:
        host.stop()


if __name__ == "__main__":
    main()
