"""An attacker's review of issue 15 on a live host: what a hostile function's answer does to the
worker that checks it (sora.function_response, sora.worker.main.checked_url_result)."""
from __future__ import annotations

import pytest

from tests.support import SoraHost, json_of, write_function

pytestmark = pytest.mark.integration

ANSWERS = r"""
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.status !== undefined) return { statusCode: q.status, body: 'x' };
  if (q.deep !== undefined) {
    let deep = []; for (let i = 0; i < Number(q.deep); i++) deep = [deep];
    return q.where === 'header' ? { statusCode: 200, headers: { 'x-deep': deep } }
                                : { statusCode: 200, body: deep };
  }
  if (q.throwDeep !== undefined) {
    // An Error whose message is not a string: the runtime's error JSON holds it as it is.
    let deep = []; for (let i = 0; i < Number(q.throwDeep); i++) deep = [deep];
    const error = new Error('deep'); error.message = deep; throw error;
  }
  return { statusCode: 200, body: 'fine' };
};
"""


def test_an_answer_the_check_cannot_read_is_an_invalid_response_not_a_dead_worker(tmp_path):
    # '²' is a digit to str.isdigit() but not to int(), and a body nested 1,000 deep parses
    # (orjson: 1,024 levels) but json.dumps cannot write it: the worker's check of the answer
    # raised ValueError or RecursionError, not BadFunctionResponse. Before the fix the worker
    # died of it (every invocation it held lost, Sora.WorkerLost, no record), and the
    # gateway's own check answered 500 'The gateway failed: ...'.
    h = SoraHost(tmp_path, [write_function(tmp_path / "fns", "answers", {"index.js": ANSWERS},
                                           name="answers")], https=False)
    h.start(wait_functions=["answers"])
    try:
        for params in ({"status": "²"}, {"status": "2²"}, {"status": "٢٠٠"},
                       {"deep": "1000"}, {"deep": "1000", "where": "header"}):
            r = h.invoke("answers", params=params)
            assert r.status_code == 502, (params, r.status_code, r.text)
            assert json_of(r)["errorType"] == "Sora.InvalidResponse", r.text
            record = h.record(r.headers["X-Sora-Request-Id"])
            assert record["status"] == "error" and \
                record["errorType"] == "Sora.InvalidResponse", record
        # An error the function threw, nested past what json.loads reads (the worker's and
        # the gateway's parse_error): a RecursionError killed the worker before the fix.
        r = h.invoke("answers", params={"throwDeep": "1500"})
        assert r.status_code == 502 and json_of(r)["errorType"] == "Error", r.text
        assert h.record(r.headers["X-Sora-Request-Id"])["status"] == "error"
        r = h.invoke("answers")
        assert (r.status_code, r.text) == (200, "fine")
        assert "Traceback" not in h.log(whole=True)
    finally:
        assert h.stop() == 0
