import os


def handler(event, context):
    name = (event.get("queryStringParameters") or {}).get("name", "world")
    return {"message": f"{os.environ['GREETING']}, {name}!", "requestId": context.aws_request_id}
