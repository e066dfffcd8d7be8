// One handler for both triggers, as on Lambda: EventBridge's "Scheduled Event" from the
// schedule, an API Gateway-style event from the URL.
let lastBeat = null;   // module state: lives as long as this instance

exports.handler = async (event, context) => {
  if (event['detail-type'] === 'Scheduled Event') {
    lastBeat = { time: event.time, rule: event.resources[0], requestId: context.awsRequestId };
    // Becomes a log line of this invocation (`sora logs heartbeat-node`).
    console.log(`heartbeat at ${event.time} from ${event.resources[0]}: ${JSON.stringify(event)}`);
    return lastBeat;
  }
  return { message: 'heartbeat-node is alive', lastBeat };
};
