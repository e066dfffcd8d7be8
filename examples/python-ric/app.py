"""Ordinary Lambda Python code, served by AWS's own runtime interface client (awslambdaric)."""
import os


def handler(event, context):
    print(f"handling {context.aws_request_id}")
    return {"message": "Hello from awslambdaric", "requestId": context.aws_request_id,
            "handler": os.environ["_HANDLER"],
            "remainingMs": context.get_remaining_time_in_millis()}
