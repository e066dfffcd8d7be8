"""A function with its own virtualenv, made by `setup` and named by `runtime`."""
import sys

import falcon


def handler(event, context):
    return {"falconVersion": falcon.__version__, "prefix": sys.prefix,
            "python": sys.version.split()[0]}
