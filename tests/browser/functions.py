"""The browser tests' keys and functions (Node.js, as Lambda users write them)."""

ADMIN_KEY = "browser-admin-0123456789abcdef"
INVOKE_KEY = "browser-invoke-0123456789abcdef"

# What a hostile function prints, returns and throws: if the dashboard put any of these into a
# page as markup, the script (or the onerror handler) would set window.__pwned.
SCRIPT_LINE = "<script>window.__pwned=1</script>"
IMG_ERROR = '<img src=x onerror="window.__pwned=2">'

# Logs one line naming the event's marker (the tests find their own line by it) and returns it.
LOGGER = """
exports.handler = async (event) => {
  let body = {};
  try { body = JSON.parse(event.body || '{}'); } catch (e) { body = event; }
  const marker = body.marker || event.marker || 'none';
  console.log('browser-test line ' + marker);
  return { statusCode: 200, body: JSON.stringify({ marker, answer: 42 }) };
};
"""

# Prints a <script> line (with its event's marker after it, so a test can tell its own line
# from those already on a page) and returns markup; with `throw` in its query, throws markup.
HOSTILE = """
exports.handler = async (event) => {
  let body = {};
  try { body = JSON.parse(event.body || '{}'); } catch (e) { body = {}; }
  const marker = body.marker || event.marker || 'none';
  console.log('%s ' + marker);
  if ((event.queryStringParameters || {}).throw) throw new Error('%s');
  return { html: '%s', marker };
};
""" % (SCRIPT_LINE, IMG_ERROR, SCRIPT_LINE)

# Fails while the flag file exists, so its events go to the dead-letter list
# (maximumRetryAttempts: 0) and stay there until the test lets the replayed event succeed;
# an always-failing function would put a replayed event straight back on the list, racing the
# page's check that it left.
FAILING = """
const fs = require('fs');
exports.handler = async (event) => {
  if (fs.existsSync(process.env.FAIL_FLAG)) throw new RangeError('failing on purpose ' + event.marker);
  return { ok: event.marker };
};
"""
