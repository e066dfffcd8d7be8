// The peer's scheduled handler (serverless-schedule.yml): appends the epoch ms at which it ran
// to $TICKS_FILE, for bench/triggers.py.
'use strict';
const fs = require('fs');
const { performance } = require('perf_hooks');

exports.handler = async () => {
  fs.appendFileSync(process.env.TICKS_FILE, `${performance.timeOrigin + performance.now()}\n`);
  return {};
};
