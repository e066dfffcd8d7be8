// The same handler as examples/hello, for serverless-offline.
module.exports = require('../../examples/hello/index.js');
