'use strict';
// Sora's Node.js runtime shim: one long-lived process per instance, one invocation at a time.
//
// The worker writes one request per line on stdin:
//   {"id": "<request id>", "timeoutMs": <ms>, "event": <event JSON>}
// Requests run one at a time, in the order they came; one may arrive while another runs.
// and this shim answers on file descriptor 3 (never stdout, so whatever the function prints is
// only log output):
//   "READY\n"                  the module loaded and the handler was found
//   "INIT <error JSON>\n"      the module failed to load; the process exits after it
//   "R <id> <result JSON>\n"   the handler's result for request <id>
//   "E <id> <error JSON>\n"    the handler threw, rejected or called back with an error
//   "X <id> <error JSON>\n"    an uncaught error: the invocation failed and this process is
//                              exiting (<id> is "-" if none was running)
// Every answer names its request: the function's code can write to the same fd, and the worker
// takes an answer only for the invocation it knows is running (it replaces the instance if not).
// After an invocation that printed, a marker line naming it closes its lines on that stream, so
// the worker can tie log lines to the invocation that printed them (as OpenWhisk ActionLoop does).
const fs = require('fs');
const path = require('path');
const { pathToFileURL, fileURLToPath } = require('url');

const CONTROL_FD = Number(process.env.SORA_CONTROL_FD || 3);
// Marker closing an invocation's log lines on a stream: NUL, the tag, the request id, newline.
const markerFor = (id) => '\u0000SORA-END ' + id + '\n';

// Standby (a pre-started runtime, see sora.supervisor.runtime_pool): Node has started, but no
// function is known yet. The first line on stdin names it: {"cwd": folder, "env": {...}}; the
// process then takes the function's folder and environment (and nothing else of its own) and
// carries on as if it had been started for it. Reading is synchronous: there is nothing else
// to do until then.
let initialInput = '';
function awaitAssignment() {
  const buf = Buffer.alloc(1 << 16);
  let got = Buffer.alloc(0);
  for (;;) {
    let n;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      if (err.code === 'EAGAIN') { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1); continue; }
      if (err.code === 'EOF') process.exit(0);
      throw err;
    }
    if (n === 0) process.exit(0);   // the pool or the worker is gone
    got = Buffer.concat([got, buf.subarray(0, n)]);
    const nl = got.indexOf(10);
    if (nl < 0) continue;
    const spec = JSON.parse(got.subarray(0, nl).toString('utf8'));
    initialInput = got.subarray(nl + 1).toString('utf8');
    process.chdir(spec.cwd);
    for (const key of Object.keys(process.env)) delete process.env[key];
    Object.assign(process.env, spec.env);
    return;
  }
}
if (process.env.SORA_STANDBY === '1') {
  // Load now what an instance loads after it is assigned (stdin's pipe stream, the usual
  // modules of handlers), so that costs nothing on the cold path.
  for (const mod of ['net', 'stream', 'tty', 'util', 'events', 'buffer', 'crypto', 'http',
    'https', 'os', 'zlib', 'child_process']) require(mod);
  awaitAssignment();
}

const entry = process.env.SORA_ENTRYPOINT;
const handlerName = process.env._HANDLER_EXPORT || 'handler';
const functionName = process.env.AWS_LAMBDA_FUNCTION_NAME;
const functionVersion = process.env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST';
const region = process.env.AWS_REGION || 'us-east-1';
// The shim's own variables are not the function's business.
delete process.env.SORA_ENTRYPOINT;
delete process.env._HANDLER_EXPORT;
delete process.env.SORA_CONTROL_FD;
delete process.env.SORA_STANDBY;

function writeControl(line) {
  const buf = Buffer.from(line, 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(CONTROL_FD, buf, off, buf.length - off);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
    }
  }
}

// Answers gather here while invocations run back to back (several may be queued behind the
// one running) and go out in one write once they are done: one system call, and one wake-up
// of the worker, for the lot. Anything that ends the process writes them first.
let outbox = '';
let flushQueued = false;
function flushOutbox() {
  flushQueued = false;
  if (outbox) {
    const text = outbox;
    outbox = '';
    writeControl(text);
  }
}
function sendAnswer(line) {
  outbox += line;
  if (!flushQueued) {
    flushQueued = true;
    // After the microtasks: the next queued invocation starts in one (runNext) and, if it
    // finishes at once, its answer joins this write.
    process.nextTick(flushOutbox);
  }
}
process.on('exit', flushOutbox);

// A stack's lines without this shim's own frames (and its line in a "Require stack"): they
// are not the function's, and they would show the caller where Sora is installed. The frames
// below the first of the shim's are how Node called the shim (stdin's events, timers): they go
// too.
function functionTrace(stack) {
  if (typeof stack !== 'string') return [];
  const lines = [];
  for (const line of stack.split('\n')) {
    if (!line.includes(__filename)) lines.push(line);
    else if (/^\s+at /.test(line)) break;
  }
  return lines;
}

function errorPayload(err) {
  if (err instanceof Error) {
    const errorType = err.name && err.name !== 'Error' ? err.name
      : (err.constructor && err.constructor.name) || 'Error';
    return { errorType, errorMessage: err.message, trace: functionTrace(err.stack) };
  }
  if (err !== null && typeof err === 'object') {
    return { errorType: 'object', errorMessage: safeStringify(err) || String(err), trace: [] };
  }
  return { errorType: typeof err, errorMessage: String(err), trace: [] };
}

function safeStringify(value) {
  try {
    const text = JSON.stringify(value);
    return text === undefined ? 'null' : text;
  } catch (err) {
    return null;
  }
}

async function loadModule(file) {
  try {
    return require(file);
  } catch (err) {
    // ES modules (.mjs, or "type": "module"): fall back to import(), as Lambda's runtime does.
    if (err && (err.code === 'ERR_REQUIRE_ESM' || err.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
      return import(pathToFileURL(file).href);
    }
    throw err;
  }
}

function resolveHandler(mod) {
  let target = mod;
  for (const part of handlerName.split('.')) {
    target = target == null ? undefined : target[part];
  }
  if (typeof target !== 'function' && mod && mod.default && mod.default !== mod) {
    target = mod.default;
    for (const part of handlerName.split('.')) {
      target = target == null ? undefined : target[part];
    }
  }
  return target;
}

// --- load errors: where they are, in the function folder's terms -----------------------------

// A path as the function's author knows it: relative to the function folder.
function folderRelative(file) {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : path.basename(file);
}

// "<file>:<line>:<column>" of a syntax error, from the lines Node prints above it:
// "<file or URL>:<line>", the source line, then spaces and carets under the token.
function arrowLocation(text) {
  const found = /^(.+):(\d+)\n.*\n([ \t]*)\^/.exec(typeof text === 'string' ? text : '');
  if (!found) return null;
  const file = found[1].startsWith('file://') ? fileURLToPath(found[1]) : found[1];
  return `${folderRelative(file)}:${found[2]}:${found[3].length + 1}`;
}

// Files of the function folder (not its dependencies) that Node could load, entry first.
function ownSources(entryFile, limit) {
  const files = [entryFile];
  const folders = [process.cwd()];
  while (folders.length && files.length < limit) {
    const folder = folders.shift();
    let entries;
    try {
      entries = fs.readdirSync(folder, { withFileTypes: true });
    } catch (err) {
      continue;
    }
    for (const entry of entries) {
      if (entry.name.startsWith('.') || entry.name === 'node_modules') continue;
      const file = path.join(folder, entry.name);
      if (entry.isDirectory()) folders.push(file);
      else if (entry.isFile() && /\.(js|mjs|cjs)$/.test(entry.name) && file !== entryFile) {
        files.push(file);
      }
    }
  }
  return files.slice(0, limit);
}

// Where a syntax error is. A CommonJS module's error carries it in its stack; an ES module's
// does not (V8 keeps it from the error import() rejects with), so the folder's own files are
// parsed one by one with `node --check` (which prints it) until one fails with the same
// message. Only on this failure path; each check takes ~40 ms, hence the limit.
const SYNTAX_CHECKED_FILES = 50;
function syntaxErrorLocation(err, entryFile) {
  const direct = arrowLocation(err.stack);
  if (direct) return direct;
  const { spawnSync } = require('child_process');
  for (const file of ownSources(entryFile, SYNTAX_CHECKED_FILES)) {
    const checked = spawnSync(process.execPath, ['--check', file],
      { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'ignore', 'pipe'] });
    if (checked.status !== 0 && typeof checked.stderr === 'string' &&
        checked.stderr.includes(`${err.name}: ${err.message}`)) {
      return arrowLocation(checked.stderr);
    }
  }
  return null;
}

// The names a module exports, for the message of a handler that is not among them.
function exportedNames(mod) {
  const names = new Set(Object.keys(mod || {}));
  if (mod && mod.default && typeof mod.default === 'object') {
    for (const key of Object.keys(mod.default)) names.add(key);
  }
  names.delete('default');
  return [...names].slice(0, 10);
}

// The INIT error of a module that failed to load, as Lambda's runtime types it, its message
// naming the file (and, for a syntax error, the line and column) relative to the folder.
function loadErrorPayload(err, entryFile) {
  const payload = errorPayload(err);
  if (payload.errorType === 'Runtime.HandlerNotFound') return payload;
  payload.errorMessage = `${payload.errorType}: ${payload.errorMessage}`;
  if (err instanceof SyntaxError) {
    payload.errorType = 'Runtime.UserCodeSyntaxError';
    const where = syntaxErrorLocation(err, entryFile);
    if (where) payload.errorMessage = `${where}: ${payload.errorMessage}`;
  } else {
    payload.errorType = 'Runtime.ImportModuleError';
  }
  // A "Require stack" names files by their full path: the function's as the folder's own,
  // this shim's not at all.
  payload.errorMessage = functionTrace(payload.errorMessage).join('\n')
    .split(process.cwd() + path.sep).join('');
  return payload;
}

let current = null;   // the invocation in progress: {id, finish}

function makeContext(id, deadline) {
  const context = {
    awsRequestId: id,
    functionName,
    functionVersion,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    invokedFunctionArn: `arn:aws:lambda:${region}:000000000000:function:${functionName}` +
      (functionVersion === '$LATEST' ? '' : `:${functionVersion}`),
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
  return context;
}

// Ends invocation `id`: closes its log lines with the marker, then sends its outcome.
function answer(id, err, result, errorType, exiting) {
  // Close the invocation's log lines, but only on a stream it wrote to: a quiet invocation costs
  // no extra writes.
  if (current) {
    if (process.stdout.bytesWritten !== current.stdoutMark) process.stdout.write(markerFor(current.id));
    if (process.stderr.bytesWritten !== current.stderrMark) process.stderr.write(markerFor(current.id));
  }
  current = null;
  if (waiting.length) queueMicrotask(runNext);
  if (err !== null && err !== undefined) {
    const payload = errorPayload(err);
    if (errorType) payload.errorType = errorType;
    if (exiting) {
      flushOutbox();
      writeControl('X ' + id + ' ' + JSON.stringify(payload) + '\n');
    } else {
      sendAnswer('E ' + id + ' ' + JSON.stringify(payload) + '\n');
    }
    return;
  }
  const text = safeStringify(result);
  if (text === null) {
    sendAnswer('E ' + id + ' ' + JSON.stringify({
      errorType: 'Runtime.ResponseSerializationError',
      errorMessage: 'The handler returned a value that cannot be serialized to JSON',
      trace: [],
    }) + '\n');
  } else {
    sendAnswer('R ' + id + ' ' + text + '\n');
  }
}

const waiting = [];   // requests that arrived while another one ran

function invoke(handler, request) {
  const { id, timeoutMs, event } = request;
  const deadline = Date.now() + timeoutMs;
  let done = false;
  const finish = (err, result, errorType, exiting) => {
    if (done) return;
    done = true;
    answer(id, err, result, errorType, exiting);
  };
  current = {
    id, finish, stdoutMark: process.stdout.bytesWritten, stderrMark: process.stderr.bytesWritten,
  };
  if (request.bad) {
    finish(new Error(request.bad), undefined, 'Runtime.InvalidEvent');
    return;
  }
  const context = makeContext(id, deadline);
  // Legacy context methods that older Lambda code still calls.
  context.done = (err, result) => finish(err, result);
  context.succeed = (result) => finish(null, result);
  context.fail = (err) => finish(err === undefined ? new Error('handled') : err);
  const callback = (err, result) => finish(err, result);
  let returned;
  try {
    returned = handler(event, context, callback);
  } catch (err) {
    finish(err);
    return;
  }
  if (returned && typeof returned.then === 'function') {
    returned.then((value) => finish(null, value),
      (err) => finish(err === undefined || err === null ? new Error('Promise rejected') : err));
  } else if (handler.length < 3) {
    // A synchronous handler that takes no callback: its return value is the result.
    finish(null, returned);
  }
  // Otherwise the handler answers through the callback (or context.done/succeed/fail).
}

function failCurrent(err, errorType) {
  if (current) current.finish(err, undefined, errorType, true);
  else {
    flushOutbox();
    writeControl('X - ' + JSON.stringify(errorPayload(err)) + '\n');
  }
}

let handler;

function runNext() {
  if (current || !waiting.length) return;
  invoke(handler, waiting.shift());
}

async function main() {
  const entryFile = path.resolve(entry);
  try {
    const mod = await loadModule(entryFile);
    handler = resolveHandler(mod);
    if (typeof handler !== 'function') {
      // Lambda's words ("index.handler is undefined or not exported": the handler string),
      // then the file and what it does export.
      const file = folderRelative(entryFile);
      const names = exportedNames(mod);
      const err = new Error(`${file.replace(/\.[cm]?js$/, '')}.${handlerName} is undefined or ` +
        `not exported (${file} exports ${names.length ? names.join(', ') : 'nothing'})`);
      err.name = 'Runtime.HandlerNotFound';
      throw err;
    }
  } catch (err) {
    const payload = loadErrorPayload(err, entryFile);
    writeControl('INIT ' + JSON.stringify(payload) + '\n');
    process.exit(1);
  }

  // An uncaught error ends the instance, as on Lambda; the invocation it broke gets the error.
  process.on('uncaughtException', (err) => {
    failCurrent(err, null);
    process.exit(1);
  });
  process.on('unhandledRejection', (reason) => {
    failCurrent(reason, 'Runtime.UnhandledPromiseRejection');
    process.exit(1);
  });

  let buffered = initialInput;
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      let request;
      try {
        request = JSON.parse(line);
      } catch (err) {
        // The worker writes the id first: the answer still names its request.
        const id = /^\{"id":"([^"\\]*)"/.exec(line);
        request = {
          id: id ? id[1] : '-', timeoutMs: 0, bad: 'The event is not valid JSON: ' + err.message,
        };
      }
      waiting.push(request);
    }
    if (!current) runNext();
  });
  // The worker closing our stdin means it is gone or done with us: leave.
  process.stdin.on('end', () => process.exit(0));
  writeControl('READY\n');
}

main();
