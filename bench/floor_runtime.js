// The floor's runtime: the hello handler behind newline-delimited JSON on stdin/stdout, with
// nothing else (no context object, no log capture, no timeouts): what any Node runtime behind
// a pipe must at least do per invocation.
'use strict';
const path = require('path');
const readline = require('readline');
const { handler } = require(path.join(__dirname, '../examples/hello/index.js'));
process.env.GREETING = 'Hello';
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const { id, event } = JSON.parse(line);
  handler(event, { awsRequestId: id }).then((result) => {
    process.stdout.write(`${id} ${JSON.stringify(result)}\n`);
  });
});
