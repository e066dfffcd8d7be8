"""A Lambda function for a container image (sora-test/python-ric), served by AWS's awslambdaric.
`handler` is the image's CMD; the others are for tests that set `handler:` in sora.yaml."""
import os
import sys
import time


def handler(event, context):
    return {"message": "hello from awslambdaric", "handler": os.environ.get("_HANDLER"),
            "requestId": context.aws_request_id, "functionName": context.function_name,
            "memoryLimitInMB": context.memory_limit_in_mb,
            "remainingMs": context.get_remaining_time_in_millis(),
            "taskRoot": os.environ.get("LAMBDA_TASK_ROOT"), "uid": os.getuid(),
            "python": sys.version.split()[0], "event": event}


def other(event, context):
    return {"message": "the other handler", "event": event}


def logs(event, context):
    print("a line on stdout", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    return {"logged": True}


class CustomError(Exception):
    pass


def fails(event, context):
    raise CustomError("it failed on purpose")


def sleeps(event, context):
    time.sleep((event or {}).get("ms", 60000) / 1000)
    return {"slept": True}


def crashes(event, context):
    os._exit(3)
