"""The smallest Python function: Lambda's handler signature, unchanged."""
import logging
import os

logger = logging.getLogger()
logger.setLevel(logging.INFO)
invocations = 0  # module state lives as long as the instance, as on Lambda


def handler(event, context):
    global invocations
    invocations += 1
    name = (event.get("queryStringParameters") or {}).get("name", "world")
    logger.info("greeting %s", name)
    return {
        "message": f"{os.environ['GREETING']}, {name}!",
        "requestId": context.aws_request_id,
        "invocationsOfThisInstance": invocations,
        "remainingMs": context.get_remaining_time_in_millis(),
    }
