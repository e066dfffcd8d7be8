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
  pid: process.pid,
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
  return { slept: ms, pid: process.pid };
};
"""

CRASH = """
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.exit) { process.exit(Number(q.exit)); }
  if (q.uncaught) { setTimeout(() => { throw new Error('uncaught boom'); }, 1); return new Promise(() => {}); }
  if (q.hang) { return new Promise(() => {}); }
  return { pid: process.pid };
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
  return { grandchild: child.pid, pid: process.pid };
};
"""

LOAD_THROWS = """
throw new Error('cannot start: missing DATABASE_URL');
"""

COUNTER = """
let calls = 0;                     // module state lives as long as the instance
const loadedAt = Date.now();
exports.handler = async () => ({ calls: ++calls, loadedAt, pid: process.pid });
"""
