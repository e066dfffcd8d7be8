// The baseline: the same handler as examples/hello behind a plain Node `http` server.
'use strict';
const http = require('http');
const path = require('path');
const { handler } = require(path.resolve(process.argv[3] || path.join(__dirname, '../examples/hello/index.js')));
process.env.GREETING = process.env.GREETING || 'Hello';
let n = 0;
http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const event = { rawPath: url.pathname, queryStringParameters: Object.fromEntries(url.searchParams) };
  handler(event, { awsRequestId: String(++n) }).then((result) => {
    const body = JSON.stringify(result);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
}).listen(Number(process.argv[2] || 9090), '127.0.0.1');
