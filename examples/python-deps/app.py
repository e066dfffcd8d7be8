"""A dependency installed by `setup` into the function folder (`pip install -t .`), at a version
other than the one Sora itself runs on: the function sees its own."""
import yaml


def handler(event, context):
    document = yaml.safe_load(event.get("body") or "{}")
    return {
        "yamlVersion": yaml.__version__,
        "yamlFile": yaml.__file__,
        "parsed": document,
    }
