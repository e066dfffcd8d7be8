"""`sora init NAME --language ...`: a new function folder that runs as it is."""
from __future__ import annotations

import os

from ..config import FUNCTION_FILE, FUNCTION_NAME_RE
from .host import CliError

SORA_YAML = """\
# {name}: a Sora function. Every field is described in docs/configuration.md.
name: {name}
language: {language}
handler: {handler}{handler_comment}
timeout: 10          # seconds
memory: 128          # MB
trigger: http        # POST/GET /functions/{name}
# setup: [{setup}]   # run before it serves, skipped while the folder is unchanged
"""

FILES = {
    "nodejs": ("index.js", "handler", "npm install", """\
// The same handler runs on AWS Lambda: (event, context) in, a result (or an HTTP response) out.
exports.handler = async (event, context) => {
  const query = event.queryStringParameters || {};
  const name = query.name || event.name || 'world';
  console.log(`greeting ${name} (request ${context.awsRequestId})`);
  return {
    statusCode: 200,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ message: `Hello, ${name}!` }),
  };
};
"""),
    "python": ("app.py", "lambda_handler", "pip install -t . -r requirements.txt", """\
\"\"\"The same handler runs on AWS Lambda: (event, context) in, a result (or an HTTP
response) out.\"\"\"
import json


def lambda_handler(event, context):
    query = event.get("queryStringParameters") or {}
    name = query.get("name") or event.get("name") or "world"
    print(f"greeting {name} (request {context.aws_request_id})")
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"message": f"Hello, {name}!"}),
    }
"""),
}


def scaffold(name: str, language: str, parent: str) -> str:
    """Create `<parent>/<name>/` with sora.yaml and a handler; returns the folder."""
    if not FUNCTION_NAME_RE.match(name):
        raise CliError(f"name: expected lower-case letters, digits and dashes, starting and "
                       f"ending with a letter or digit, at most 63 characters, got {name!r}",
                       exit_code=2)
    directory = os.path.abspath(os.path.join(parent, name))
    if os.path.exists(directory) and os.listdir(directory):
        raise CliError(f"{directory}: expected a new or empty folder, but it has files; "
                       "nothing was written", exit_code=2)
    entrypoint, export, setup, code = FILES[language]
    # Lambda's handler string: the file without its extension, then the function's name.
    handler = f"{os.path.splitext(entrypoint)[0]}.{export}"
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, FUNCTION_FILE), "w", encoding="utf-8") as fh:
        fh.write(SORA_YAML.format(name=name, language=language, handler=handler,
                                  handler_comment=f"   # {entrypoint}, function {export}, as "
                                                  "on Lambda", setup=setup))
    with open(os.path.join(directory, entrypoint), "w", encoding="utf-8") as fh:
        fh.write(code)
    return directory
