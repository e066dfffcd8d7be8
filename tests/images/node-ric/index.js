// A Lambda function for a container image (sora-test/node-ric), served by AWS's aws-lambda-ric.
// `handler` is the image's CMD; the others are for tests that set `handler:` in sora.yaml.
exports.handler = async (event, context) => ({
  message: 'hello from aws-lambda-ric',
  handler: process.env._HANDLER,
  requestId: context.awsRequestId,
  functionName: context.functionName,
  memoryLimitInMB: context.memoryLimitInMB,
  remainingMs: context.getRemainingTimeInMillis(),
  taskRoot: process.env.LAMBDA_TASK_ROOT,
  uid: process.getuid(),
  node: process.version,
  event,
});

exports.other = async (event) => ({ message: 'the other handler', event });

exports.logs = async () => {
  console.log('a line on stdout');
  console.error('a line on stderr');
  return { logged: true };
};

exports.fails = async () => {
  const error = new Error('it failed on purpose');
  error.name = 'CustomError';
  throw error;
};

exports.sleeps = async (event) => {
  await new Promise((resolve) => setTimeout(resolve, (event && event.ms) || 60000));
  return { slept: true };
};

exports.crashes = async () => {
  process.exit(3);
};
