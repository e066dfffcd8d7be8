// An Express app made into a Lambda handler by serverless-http, exactly as it would be
// deployed behind a Lambda function URL.
const express = require('express');
const serverless = require('serverless-http');

const app = express();
app.use(express.json());

app.get('/', (req, res) => res.json({ hello: 'express' }));
app.get('/users/:id', (req, res) => {
  res.cookie('seen', req.params.id, { httpOnly: true });
  res.cookie('theme', req.cookies ? 'x' : 'dark');
  res.json({ id: req.params.id, q: req.query, cookie: req.get('cookie') || null });
});
app.post('/echo', (req, res) => res.status(201).json({ got: req.body, type: req.get('content-type') }));
app.get('/binary', (req, res) => res.type('application/octet-stream').send(Buffer.from([0, 255, 1, 254])));
app.get('/redirect', (req, res) => res.redirect(302, '/users/7'));

module.exports.handler = serverless(app, { binary: ['application/octet-stream'] });
