"""Node.js functions used by the integration tests, written as Lambda users write them."""

ECHO = """
exports.handler = async (event, context) => ({
  event,
  context: {
    awsRequestId: context.awsRequestId,
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    memoryLimitInMB: context.memoryLimitInMB,
    invokedFunctionArn: context.invokedFunctionArn,
    remaining: context.getRemainingTimeInMillis(),
    callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
  },
  env: process.env,
  instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
});
"""

CALLBACK = """
exports.handler = (event, context, callback) => {
  setTimeout(() => callback(null, { via: 'callback', id: context.awsRequestId }), 5);
};
"""

PROMISE = """
exports.handler = function (event) {
  return new Promise((resolve) => setImmediate(() => resolve({ via: 'promise' })));
};
"""

ESM_MJS = """
export const handler = async (event, context) => ({ via: 'mjs', name: context.functionName });
"""

ESM_TYPE_MODULE = """
import { basename } from 'node:path';
export async function handler() {
  return { via: 'type-module', file: basename(new URL(import.meta.url).pathname) };
}
"""

NESTED = """
module.exports = { routes: { main: async () => ({ via: 'nested' }) } };
"""

ERRORS = """
class ValidationError extends Error {
  constructor(message) { super(message); this.name = 'ValidationError'; }
}
exports.handler = async (event) => {
  const kind = (event.queryStringParameters || {}).kind;
  if (kind === 'reject') return Promise.reject(new TypeError('rejected on purpose'));
  if (kind === 'callback') return new Promise(() => { throw new RangeError('never'); });
  if (kind === 'string') throw 'plain string';
  throw new ValidationError('name is required');
};
"""

RESPONSE = """
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.kind === 'binary') {
    return { statusCode: 200, headers: { 'content-type': 'image/png' },
             body: Buffer.from([0, 1, 2, 250, 255]).toString('base64'), isBase64Encoded: true };
  }
  if (q.kind === 'string') return 'just a string';
  if (q.kind === 'array') return [1, 2, 3];
  if (q.kind === 'null') return undefined;
  if (q.kind === 'bad-status') return { statusCode: 'teapot' };
  return {
    statusCode: 418,
    headers: { 'content-type': 'text/plain', 'x-custom': 'yes' },
    cookies: ['a=1; Path=/', 'b=2; HttpOnly'],
    body: 'short and stout',
  };
};
"""

SLOW = """
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.forever) return new Promise(() => {});
  if (q.spin) { for (;;) {} }
  const ms = Number(q.ms || 0);
  await new Promise((r) => setTimeout(r, ms));
  return { slept: ms, instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"""

# Sleeps `ms` and says when it ran and where (to see scaling and concurrency from outside).
TIMED = """
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  const start = Date.now();
  await new Promise((r) => setTimeout(r, Number(q.ms || 100)));
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME, start, end: Date.now() };
};
"""

CRASH = """
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.exit) { process.exit(Number(q.exit)); }
  if (q.uncaught) { setTimeout(() => { throw new Error('uncaught boom'); }, 1); return new Promise(() => {}); }
  if (q.hang) { return new Promise(() => {}); }
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"""

PRINTER = """
exports.handler = async (event, context) => {
  console.log('hello from', context.awsRequestId);
  console.error('an error line for', context.awsRequestId);
  return { ok: true };
};
"""

SPAWNER = """
const { spawn } = require('child_process');
exports.handler = async () => {
  const child = spawn('sleep', ['300'], { stdio: 'ignore' });
  return { spawned: child.pid > 0, instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"""

LOAD_THROWS = """
throw new Error('cannot start: missing DATABASE_URL');
"""

COUNTER = """
let calls = 0;                     // module state lives as long as the instance
const loadedAt = Date.now();
exports.handler = async () => ({ calls: ++calls, loadedAt, instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME });
"""


# --- Python functions ----------------------------------------------------------------------------

PY_ECHO = """
import os
import sys
import time

loaded_at = time.time()   # module state lives as long as the instance
calls = 0


def handler(event, context):
    global calls
    calls += 1
    try:
        import falcon  # Sora's own dependency: must not be importable by a function
        sora_packages = True
    except ImportError:
        sora_packages = False
    return {
        "event": event,
        "context": {
            "aws_request_id": context.aws_request_id,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "remaining": context.get_remaining_time_in_millis(),
        },
        "env": dict(os.environ),
        "calls": calls,
        "loaded_at": loaded_at,
        "instance": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
        "executable": sys.executable,
        "path0": sys.path[0],
        "sora_packages": sora_packages,
    }
"""

PY_ERRORS = """
class ValidationError(Exception):
    pass


def handler(event, context):
    kind = (event.get("queryStringParameters") or {}).get("kind")
    if kind == "unserializable":
        return {"when": object()}
    if kind == "decimal":
        from decimal import Decimal
        return {"price": Decimal("9.50"), "count": Decimal("3")}
    if kind in ("nan", "inf", "-inf"):
        return {"value": float(kind)}
    if kind == "decimal-nan":
        from decimal import Decimal
        return {"value": Decimal("NaN")}
    raise ValidationError("name is required")
"""

PY_LOGS = """
import logging
import sys

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)


def handler(event, context):
    print("printed for", context.aws_request_id)
    print("to stderr for", context.aws_request_id, file=sys.stderr)
    logger.info("logged for %s", context.aws_request_id)
    stolen = sys.stdin.read()   # the request pipe is not the function's stdin
    print('{"statusCode": 500}')  # looks like a result; must stay a log line
    return {"ok": True, "stdin": stolen}
"""

PY_IMPORT_ERROR = """
import a_module_that_is_not_installed


def handler(event, context):
    return 1
"""

# One function per runtime with the same behaviours, for the tests that every runtime must pass
# alike: ?ms=N sleeps, ?forever never answers, ?exit=N ends the process, ?fail=1 reports an error.
SHARED_NODE = """
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.exit) process.exit(Number(q.exit));
  if (q.fail) { const e = new Error('failed on purpose'); e.name = 'PurposeError'; throw e; }
  if (q.forever) return new Promise(() => {});
  await new Promise((r) => setTimeout(r, Number(q.ms || 0)));
  console.log('shared log line');
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"""

SHARED_PYTHON = """
import os
import time


class PurposeError(Exception):
    pass


def handler(event, context):
    q = event.get("queryStringParameters") or {}
    if "exit" in q:
        os._exit(int(q["exit"]))
    if "fail" in q:
        raise PurposeError("failed on purpose")
    if "forever" in q:
        while True:
            time.sleep(1)
    time.sleep(int(q.get("ms", 0)) / 1000)
    print("shared log line")
    return {"instance": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]}
"""

# Runtime API clients in plain sh and curl, as in AWS's custom runtime tutorial: the loop's
# head (wait for the next invocation, read its id), then what each does with it.
PROVIDED_LOOP = r"""#!/bin/sh
set -eu
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
HEADERS="$(mktemp)"
trap 'rm -f "$HEADERS"' EXIT
while true; do
  EVENT=$(curl -sS -D "$HEADERS" "$API/invocation/next")
  ID=$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$HEADERS" | cut -d' ' -f2 | tr -d '\r\n')
"""

SHARED_PROVIDED = PROVIDED_LOOP + r"""  case "$EVENT" in
    *'"rawQueryString":"exit='*) exit 3 ;;
    *'"rawQueryString":"forever='*) sleep 600 ;;
    *'"rawQueryString":"fail='*)
      curl -sS -o /dev/null -H 'Lambda-Runtime-Function-Error-Type: PurposeError' \
        "$API/invocation/$ID/error" -d '{"errorMessage":"failed on purpose","errorType":"PurposeError"}'
      continue ;;
    *'"rawQueryString":"ms='*) sleep 0.2 ;;
    *'"rawQueryString":"answer='*)
      ANSWER=$(printf '%s' "$EVENT" | sed -n 's/.*"rawQueryString":"answer=\([^"&]*\).*/\1/p')
      curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary "$ANSWER"
      continue ;;
  esac
  echo "shared log line"
  curl -sS -o /dev/null "$API/invocation/$ID/response" -d "{\"instance\": \"$AWS_LAMBDA_LOG_STREAM_NAME\"}"
done
"""

PROVIDED_ECHO = PROVIDED_LOOP + r"""  DEADLINE=$(grep -i '^Lambda-Runtime-Deadline-Ms:' "$HEADERS" | cut -d' ' -f2 | tr -d '\r\n')
  ARN=$(grep -i '^Lambda-Runtime-Invoked-Function-Arn:' "$HEADERS" | cut -d' ' -f2 | tr -d '\r\n')
  BODY=$(cat <<JSON
{"event": $EVENT, "id": "$ID", "deadline": $DEADLINE, "arn": "$ARN", "handler": "$_HANDLER",
 "task_root": "$LAMBDA_TASK_ROOT", "name": "$AWS_LAMBDA_FUNCTION_NAME", "pwd": "$(pwd)"}
JSON
)
  curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary "$BODY"
done
"""

PROVIDED_INIT_ERROR = r"""#!/bin/sh
curl -sS -o /dev/null "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/init/error" \
  -H 'Lambda-Runtime-Function-Error-Type: Runtime.ConfigMissing' \
  -d '{"errorMessage": "DATABASE_URL is not set", "errorType": "Runtime.ConfigMissing"}'
sleep 30
"""

# Prints lines naming its own request id, on both streams, several times with pauses between,
# so that lines of concurrent invocations interleave in time.
TAGGED_PRINTER = """
exports.handler = async (event, context) => {
  const q = event.queryStringParameters || {};
  for (let i = 0; i < 3; i++) {
    console.log(`out ${i} of ${context.awsRequestId}`);
    console.error(`err ${i} of ${context.awsRequestId}`);
    await new Promise((r) => setTimeout(r, Number(q.ms || 5)));
  }
  if (q.fail) throw new TypeError('asked to fail');
  if (q.forever) return new Promise(() => {});
  if (q.exit) process.exit(2);
  return { id: context.awsRequestId };
};
"""

# An asynchronous-event consumer that leaves marks in $MARKS: `<key>.<n>.start` and
# `<key>.<n>.end` for its n-th attempt at an event (start/end times inside, in ms), and fails
# while `<key>.fail` exists. `key` is the event's own id, or the HTTP body for function URL
# events. An event with `sleepMs` holds its instance that long.
EVENT_SINK = """
const fs = require('node:fs');
const path = require('node:path');
exports.handler = async (event, context) => {
  const key = event.key || event.body;
  const marks = process.env.MARKS;
  const n = fs.readdirSync(marks).filter((f) => f.startsWith(key + '.') && f.endsWith('.start')).length + 1;
  fs.writeFileSync(path.join(marks, `${key}.${n}.start`), String(Date.now()));
  console.log(`attempt ${n} of ${key} as ${context.awsRequestId}`);
  if (event.sleepMs) await new Promise((r) => setTimeout(r, event.sleepMs));
  fs.writeFileSync(path.join(marks, `${key}.${n}.end`), String(Date.now()));
  if (fs.existsSync(path.join(marks, `${key}.fail`))) {
    throw new RangeError(`attempt ${n} of ${key} failed on purpose`);
  }
  return { key, attempt: n };
};
"""

# Says which process ran it and how many times `setup` has run (each run appends a line).
SETUP_COUNTER = """
const fs = require('node:fs');
exports.handler = async () => ({
  instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
  setupRuns: fs.existsSync('setup-runs.txt')
    ? fs.readFileSync('setup-runs.txt', 'utf8').trim().split('\\n').length : 0,
});
"""
