// Invoke a function through Sora with the AWS SDK for JavaScript v3, as a user would:
//   node invoke.mjs <endpoint> <function> <payload JSON> [RequestResponse|Event] [Tail|None]
// Prints the SDK's answer as JSON (Payload decoded as text), or {"error": ...} on an error.
// Signs with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when set (a Sora key's name and the key;
// any pair on a host without keys), with its clock off by SORA_TEST_CLOCK_OFFSET_MS if given.
import { LambdaClient, InvokeCommand } from '@aws-sdk/client-lambda';

const [endpoint, functionName, payload, type = 'RequestResponse', logType = 'None'] =
  process.argv.slice(2);
const client = new LambdaClient({
  endpoint,
  region: 'us-east-1',
  credentials: { accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? 'sora',
                 secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? 'sora' },
  systemClockOffset: Number(process.env.SORA_TEST_CLOCK_OFFSET_MS ?? 0),
  maxAttempts: 1,
});
try {
  const out = await client.send(new InvokeCommand({
    FunctionName: functionName,
    Payload: new TextEncoder().encode(payload),
    InvocationType: type,
    LogType: logType,
  }));
  console.log(JSON.stringify({
    StatusCode: out.StatusCode,
    FunctionError: out.FunctionError ?? null,
    ExecutedVersion: out.ExecutedVersion ?? null,
    LogResult: out.LogResult ?? null,
    Payload: out.Payload ? new TextDecoder().decode(out.Payload) : null,
    RequestId: out.$metadata.requestId ?? null,
  }));
} catch (err) {
  console.log(JSON.stringify({ error: err.name, message: err.message,
                               status: err.$metadata?.httpStatusCode ?? null }));
}
