"""Sums the `amount` column of each CSV file dropped into ./inbox, then moves the file to
./inbox/done/. Unchanged Lambda code for S3 notifications, except that it reads the file from
the watched folder (Sora mounts it at the same path) where Lambda code would call S3's GetObject."""
import csv
import logging
import os
from urllib.parse import unquote_plus

logger = logging.getLogger()
logger.setLevel(logging.INFO)

INBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inbox")
DONE = os.path.join(INBOX, "done")


def handler(event, context):
    results = []
    for record in event["Records"]:
        # S3 URL-encodes keys ("red flower.csv" arrives as "red+flower.csv"), so does Sora.
        key = unquote_plus(record["s3"]["object"]["key"])
        results.append(process(key))
    return {"files": results, "requestId": context.aws_request_id}


def process(key: str) -> dict:
    source, target = os.path.join(INBOX, key), os.path.join(DONE, key)
    try:
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        # Events run at least once: a retry after the move finds the file already done.
        if os.path.exists(target):
            logger.info("%s: already processed", key)
            return {"file": key, "already": True}
        raise
    total = sum(float(row["amount"]) for row in rows)
    os.makedirs(DONE, exist_ok=True)
    os.replace(source, target)
    logger.info("%s: %d rows, amount total %s", key, len(rows), f"{total:g}")
    return {"file": key, "rows": len(rows), "total": total}
