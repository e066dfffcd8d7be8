// Ordinary Lambda Node.js code, served by AWS's own runtime interface client (aws-lambda-ric).
exports.handler = async (event, context) => {
  console.log('handling', context.awsRequestId);
  return { message: 'Hello from aws-lambda-ric', requestId: context.awsRequestId,
           remainingMs: context.getRemainingTimeInMillis() };
};
