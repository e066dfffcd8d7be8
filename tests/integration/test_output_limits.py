"""Output caps: a result past Lambda's 6 MiB is a clear error, an endless log line is cut, and
the instance serves on."""
from __future__ import annotations

import pytest

from tests.support import json_of, served, wait_for, write_function

pytestmark = pytest.mark.integration

BIG = """
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.line) process.stdout.write('x'.repeat(Number(q.line) * 1024) + '\\nafter the long line\\n');
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME, data: 'y'.repeat(Number(q.kb || 0) * 1024) };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("limits")
    fn = write_function(base / "fns", "big", {"index.js": BIG}, name="big", instances=1)
    yield from served(base, [fn], https=False)


def test_a_result_past_the_limit_is_a_clear_error_and_the_instance_serves_on(host):
    ok = host.invoke("big", params={"kb": "5000"})
    assert ok.status_code == 200 and len(json_of(ok)["data"]) == 5000 * 1024
    r = host.invoke("big", params={"kb": "7000"})
    assert r.status_code == 502
    body = json_of(r)
    assert body["errorType"] == "Sora.ResponseTooLarge"
    assert "the limit is 6291456 bytes" in body["errorMessage"]
    after = host.invoke("big", params={"kb": "1"})
    assert after.status_code == 200 and json_of(after)["instance"] == json_of(ok)["instance"]


def test_a_huge_log_line_is_cut_and_the_next_lines_kept(host):
    r = host.invoke("big", params={"line": "2048"})   # one 2 MiB line
    assert r.status_code == 200
    rid = r.headers["X-Sora-Request-Id"]
    text = wait_for(lambda: (x := host.session.get(
        f"{host.url}/api/functions/big/logs", params={"requestId": rid})).ok and
        "after the long line" in x.text and x.text, what="the lines after the long one")
    assert "[sora: line cut at 262144 bytes]" in text
    assert len(text) < 400 * 1024
