// The smallest Lambda-style function: returns JSON, which becomes a 200 response.
exports.handler = async (event, context) => {
  const name = (event.queryStringParameters && event.queryStringParameters.name) || 'world';
  return { message: `${process.env.GREETING}, ${name}!`, requestId: context.awsRequestId };
};
