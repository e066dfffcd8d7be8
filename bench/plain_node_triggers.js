// Plain Node doing what Sora's triggers do, for bench/triggers.py, with nothing durable in
// between: `interval N` runs setInterval(1000) N times and prints each tick's lateness (ms
// after its due time) as one JSON list; `watch DIR PATTERN_SUFFIX` prints "<epoch ms> <name>"
// the first time fs.watch reports each file whose name ends with the suffix (the handler).
'use strict';
const fs = require('fs');
const { performance } = require('perf_hooks');

const now = () => performance.timeOrigin + performance.now();   // epoch ms, sub-ms
const [mode, arg, suffix] = process.argv.slice(2);

if (mode === 'interval') {
  const ticks = Number(arg);
  const start = now();
  const late = [];
  const timer = setInterval(() => {
    late.push(now() - (start + (late.length + 1) * 1000));
    if (late.length === ticks) {
      clearInterval(timer);
      process.stdout.write(JSON.stringify(late) + '\n');
    }
  }, 1000);
} else if (mode === 'watch') {
  const seen = new Set();
  fs.watch(arg, (eventType, name) => {
    if (!name || !name.endsWith(suffix) || seen.has(name)) return;
    seen.add(name);
    process.stdout.write(`${now()} ${name}\n`);
  });
  process.stdout.write('ready\n');
} else {
  console.error('usage: plain_node_triggers.js interval N | watch DIR SUFFIX');
  process.exit(2);
}
