"""The AWS Lambda management API: create, read, change and delete functions as Lambda does.

Point boto3, the AWS CLI or any AWS SDK at Sora (`endpoint_url`, signed with a key that has
the `admin` scope) and `create-function`, `get-function`, `list-functions`,
`update-function-code`, `update-function-configuration`, `delete-function`, and the versions'
and aliases' operations (on sora.versions.api) work, with Lambda's paths, fields, status codes
and error types (README.md, "The Lambda management API", lists them).

Functions created here are stored in the state dir (sora.deploy.store) and go live through a
reload of that one function on the supervisor's admin channel: the answer comes once the
function serves (State `Active`) or failed to (State `Failed` with its reason); a change of
code or settings is a rolling switch, and the answer says how it went (`LastUpdateStatus`).
Functions from `functionPaths` are shown, but their code and settings change through their
folder: changing or deleting them here is a ResourceConflictException.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import platform
import re
import time

import falcon
import orjson

from ..control import admin
from ..config import (ENV_NAME_RE, FUNCTION_NAME_RE, FunctionConfig, HostConfig,
                      lambda_handler)
from ..deploy.store import ManagedStore, StoreError
from ..deploy.zip_code import MB, ZipLimits, ZipRefused, check_zipped_size
from ..function_table import FunctionTable
from ..runtimes.base import ACCOUNT, DEFAULT_REGION
from ..versions.api import VersionsApi
from ..versions.store import VersionError
from .errors import SoraError
from .invoke_api import ARN_RE, InvokeApiError as ApiError
from .requests import REQUEST_ID_HEADER, read_body, request_id_of

log = logging.getLogger("sora.gateway.management")

LATEST = "$LATEST"
# Lambda's runtime identifiers Sora runs, and the language each means.
RUNTIMES = ((re.compile(r"^nodejs(18|20|22)\.x$"), "nodejs"),
            (re.compile(r"^python3\.[0-9]{1,2}$"), "python"),
            (re.compile(r"^provided(\.al2|\.al2023)?$"), "provided"))
# What GetFunction says a functionPaths function's runtime is (its sora.yaml names a
# language, not a Lambda runtime).
LANGUAGE_RUNTIMES = {"nodejs": "nodejs", "python": "python3", "provided": "provided"}
# Lambda's defaults for a function created without them.
DEFAULT_TIMEOUT = 3
DEFAULT_MEMORY = 128
# Variables Lambda reserves (its runtime sets them); Sora's runtimes set them too.
RESERVED_ENV = re.compile(r"^(_HANDLER|_X_AMZN_TRACE_ID|AWS_REGION|AWS_DEFAULT_REGION|"
                          r"AWS_EXECUTION_ENV|AWS_LAMBDA_.*|AWS_ACCESS_KEY_ID|"
                          r"AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|LAMBDA_TASK_ROOT|"
                          r"LAMBDA_RUNTIME_DIR|SORA_.*)$")
# Settings Lambda has that Sora cannot honour as asked: refused rather than ignored.
UNSUPPORTED = {"PackageType": "Zip", "ImageConfig": None, "FileSystemConfigs": None,
               "Layers": None, "VpcConfig": None}
# How long a create or change waits for the function to go live before answering `Pending`
# / `InProgress` (the SDKs' default read timeout is 60 s).
LIVE_WAIT = 50.0
ARCHITECTURE = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


CREDENTIAL_REGION_RE = re.compile(r"Credential=[^/,\s]+/[0-9]{8}/([a-z0-9-]{1,30})/")


def function_arn(name: str, qualifier: str | None = None, region: str = DEFAULT_REGION) -> str:
    arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def region_of(req) -> str:
    """The region the caller's SDK signed for (its ARNs name it, as Lambda's would), else
    the runtimes' default region."""
    match = CREDENTIAL_REGION_RE.search(req.get_header("Authorization") or "")
    return match.group(1) if match else DEFAULT_REGION


def parse_name(raw: str) -> tuple[str, str | None]:
    """(name, qualifier or None) from a name, `name:qualifier` or an ARN; a name Sora cannot
    have is InvalidParameterValueException (Lambda's names allow more than Sora's)."""
    match = ARN_RE.match(raw)
    rest = match.group("rest") if match else raw
    name, colon, qualifier = rest.partition(":")
    if not FUNCTION_NAME_RE.match(name):
        raise ApiError(400, "InvalidParameterValueException", (
            f"FunctionName: expected lower-case letters, digits and dashes, starting and "
            f"ending with a letter or digit, at most 63 characters (Sora's function names), "
            f"got {raw[:80]!r}"))
    return name, (qualifier if colon else None)


def language_of(runtime) -> str:
    if isinstance(runtime, str):
        for pattern, language in RUNTIMES:
            if pattern.match(runtime):
                return language
    raise ApiError(400, "InvalidParameterValueException", (
        f"Runtime: expected nodejs18.x, nodejs20.x, nodejs22.x, python3.x or provided "
        f"(provided.al2, provided.al2023), got {str(runtime)[:40]!r}"))


def settings_of(body: dict, language: str | None, creating: bool) -> tuple[dict, dict]:
    """(sora.yaml settings, Lambda's own fields) from a CreateFunction or
    UpdateFunctionConfiguration body; each field checked by Lambda's rules, its error naming
    it. A setting left out of an update is None in neither: it is not in the dict."""
    for field_name, allowed in UNSUPPORTED.items():
        value = body.get(field_name)
        if value not in (None, allowed, [], {}) and not (field_name == "VpcConfig" and not any(
                (value or {}).values())):
            raise ApiError(400, "InvalidParameterValueException", (
                f"{field_name}: not supported by Sora (zip packages only, no layers, VPCs or "
                f"file systems), got {str(value)[:60]!r}"))
    config: dict = {}
    fields: dict = {}
    if "Runtime" in body or creating:
        new_language = language_of(body.get("Runtime"))
        if language is not None and new_language != language and not creating:
            raise ApiError(400, "InvalidParameterValueException", (
                f"Runtime: expected a runtime of the function's language ({language}); "
                f"changing the language needs new code (UpdateFunctionCode cannot change "
                f"it either: delete and create the function), got {body['Runtime']!r}"))
        language = new_language
        config["language"] = language
        fields["Runtime"] = body.get("Runtime")
    if "Handler" in body or creating:
        handler = body.get("Handler")
        if language == "provided" and handler in (None, ""):
            config["handler"] = "bootstrap"
        else:
            if not isinstance(handler, str) or not 0 < len(handler) <= 128 or \
                    any(c.isspace() for c in handler) or (language != "provided" and
                                                         lambda_handler(language, handler)
                                                         is None):
                example = {"nodejs": "index.handler", "python": "app.lambda_handler"}.get(
                    language, "index.handler")
                raise ApiError(400, "InvalidParameterValueException", (
                    f"Handler: expected the file and the function it exports, as Lambda "
                    f"writes them (such as {example!r}), got {str(handler)[:60]!r}"))
            config["handler"] = handler
        fields["Handler"] = config["handler"] if language != "provided" else handler or ""
    if "Timeout" in body or creating:
        timeout = body.get("Timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 900:
            raise ApiError(400, "InvalidParameterValueException", (
                f"Timeout: expected a whole number of seconds from 1 to 900, got {timeout!r}"))
        config["timeout"] = timeout
    if "MemorySize" in body or creating:
        memory = body.get("MemorySize", DEFAULT_MEMORY)
        if isinstance(memory, bool) or not isinstance(memory, int) or \
                not 128 <= memory <= 10240:
            raise ApiError(400, "InvalidParameterValueException", (
                f"MemorySize: expected MB from 128 to 10240, got {memory!r}"))
        config["memory"] = memory
    if "Environment" in body:
        config["env"] = environment_of(body["Environment"])
    if "Description" in body or creating:
        description = body.get("Description", "")
        if not isinstance(description, str) or len(description) > 256:
            raise ApiError(400, "InvalidParameterValueException",
                           "Description: expected a string of at most 256 characters")
        fields["Description"] = description
    if "Role" in body:
        fields["Role"] = str(body["Role"])[:2048]   # kept and shown, never used
    return config, fields


def environment_of(environment) -> dict:
    variables = (environment or {}).get("Variables") if isinstance(environment, dict) else None
    variables = variables or {}
    if not isinstance(variables, dict):
        raise ApiError(400, "InvalidParameterValueException",
                       "Environment.Variables: expected a map of names to strings")
    for key, value in variables.items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise ApiError(400, "InvalidParameterValueException", (
                f"Environment.Variables: expected names of letters, digits and '_' not "
                f"starting with a digit, got {str(key)[:60]!r}"))
        if RESERVED_ENV.match(key):
            raise ApiError(400, "InvalidParameterValueException", (
                f"Environment.Variables: {key} is reserved (the runtime sets it)"))
        if not isinstance(value, str):
            raise ApiError(400, "InvalidParameterValueException", (
                f"Environment.Variables: expected a string value for {key}"))
    if len(orjson.dumps(variables)) > 4096:
        raise ApiError(400, "InvalidParameterValueException", (
            "Environment.Variables: expected at most 4 KB in all (Lambda's limit)"))
    return dict(variables)


def zip_of(value, limits: ZipLimits) -> bytes:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "InvalidParameterValueException", (
            "Code.ZipFile: expected the zip, base64-encoded (Sora takes no S3Bucket/S3Key "
            "or ImageUri)"))
    # Refused by its size before decoding: base64 is 4 bytes for each 3.
    try:
        check_zipped_size(len(value) * 3 // 4 - value.count("=", -2), limits)
    except ZipRefused as exc:
        raise _store_error(exc) from None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "InvalidParameterValueException",
                       "Code.ZipFile: expected base64-encoded bytes") from None


def _lambda_time(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + \
        f".{int(when * 1000) % 1000:03d}+0000"


class ManagementRoute:
    """What every management route shares: admin scope, Lambda's error format, the body
    limit for an uploaded zip (base64) and the store."""

    auth_scope = "admin"
    refusal_error = ApiError   # 401/403 in Lambda's format, for the SDKs (gateway.auth)

    def __init__(self, config: HostConfig, functions: FunctionTable, store: ManagedStore):
        self.config = config
        self.functions = functions
        self.store = store
        limits = store.limits
        # The zip base64-encoded, and room for the rest of the JSON: the Authorizer reads a
        # signed body with this limit too (gateway.auth), so calls keep server.maxBodyBytes.
        self.max_body = max(config.server.maxBodyBytes, limits.max_zipped * 4 // 3 + MB)
        self.body_timeout = config.server.bodyTimeout

    async def body_of(self, req) -> dict:
        try:
            raw = await read_body(req, self.max_body, self.body_timeout)
        except SoraError as exc:
            if exc.status == 413:
                raise ApiError(413, "RequestTooLargeException", str(exc)) from None
            raise
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "InvalidRequestContentException",
                           f"Could not parse request body into json: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "InvalidRequestContentException",
                           "Expected a JSON object as the request body")
        return body

    def answer(self, req, resp, status: int, document: dict | None) -> None:
        resp.status = status
        request_id = request_id_of(req)
        resp.set_header(REQUEST_ID_HEADER, request_id)
        resp.set_header("x-amzn-RequestId", request_id)
        if document is not None:
            resp.content_type = "application/json"
            resp.data = orjson.dumps(document)

    # --- what a function is -----------------------------------------------------------------
    def path_function(self, name: str) -> FunctionConfig | None:
        """A functionPaths (or joined host's) function of this name, if any."""
        fn = self.functions.get(name)
        return fn if fn is not None and not fn.managed else None

    def require_managed(self, name: str, action: str) -> None:
        """ResourceConflictException for a functionPaths function, 404 for none."""
        if self.store.exists(name):
            return
        if self.path_function(name) is not None or name in self.functions.broken:
            raise ApiError(409, "ResourceConflictException", (
                f"Function {name} comes from functionPaths (a folder with a sora.yaml): "
                f"{action}, then reload (`sora reload`); it does not change through this "
                f"API"))
        raise ApiError(404, "ResourceNotFoundException", f"Function not found: {name}")

    def configuration(self, name: str, region: str = DEFAULT_REGION) -> dict:
        """Lambda's FunctionConfiguration of the function, or ResourceNotFoundException."""
        fn = self.path_function(name)   # (the one serving, if a created one has its name)
        document = self.store.read(name) if fn is None else None
        if document is not None:
            return self.managed_configuration(name, document, region)
        if fn is None:
            broken = self.functions.broken.get(name)
            if broken is None:
                raise ApiError(404, "ResourceNotFoundException", f"Function not found: {name}")
            return {"FunctionName": name, "FunctionArn": function_arn(name, region=region),
                    "Version": LATEST, "State": "Failed", "StateReason": broken.reason,
                    "StateReasonCode": "InvalidConfiguration", "PackageType": "Zip"}
        handler = fn.handler
        if fn.language in ("nodejs", "python"):
            handler = os.path.splitext(fn.entrypoint)[0] + "." + fn.handler
        try:
            modified = os.stat(fn.source).st_mtime
        except OSError:
            modified = time.time()
        return {
            "FunctionName": name, "FunctionArn": function_arn(name, region=region),
            "Runtime": LANGUAGE_RUNTIMES[fn.language], "Role": "", "Handler": handler,
            "CodeSize": 0, "CodeSha256": "", "Description": "",
            "Timeout": int(round(fn.timeout)), "MemorySize": fn.memory,
            "LastModified": _lambda_time(modified), "Version": LATEST,
            "Environment": {"Variables": dict(fn.env)}, "State": "Active",
            "LastUpdateStatus": "Successful", "PackageType": "Zip",
            "Architectures": [ARCHITECTURE], "SoraSource": "functionPaths",
        }

    def managed_configuration(self, name: str, document: dict, region: str) -> dict:
        config, fields = document["config"], document.get("lambda", {})
        status = self.store.status(name)
        answer = {
            "FunctionName": name, "FunctionArn": function_arn(name, region=region),
            "Runtime": fields.get("Runtime"), "Role": fields.get("Role", ""),
            "Handler": fields.get("Handler") or config.get("handler"),
            "CodeSize": fields.get("CodeSize", 0), "CodeSha256": fields.get("CodeSha256", ""),
            "Description": fields.get("Description", ""),
            "Timeout": config.get("timeout", DEFAULT_TIMEOUT),
            "MemorySize": config.get("memory", DEFAULT_MEMORY),
            "LastModified": fields.get("LastModified"), "Version": LATEST,
            "RevisionId": fields.get("RevisionId"),
            "Environment": {"Variables": dict(config.get("env") or {})},
            "State": status.get("State", "Active"),
            "LastUpdateStatus": status.get("LastUpdateStatus", "Successful"),
            "PackageType": "Zip", "Architectures": [ARCHITECTURE], "SoraSource": "api",
        }
        for key in ("StateReason", "StateReasonCode", "LastUpdateStatusReason",
                    "LastUpdateStatusReasonCode"):
            if status.get(key):
                answer[key] = status[key]
        return answer

    def qualified_configuration(self, req, name: str, qualifier: str | None) -> dict:
        """The configuration of `$LATEST`, of a published version, or of the version an
        alias names."""
        if not qualifier or qualifier == LATEST:
            return self.configuration(name, region_of(req))
        self.require_known(name)
        api = versions_api(self, req)
        try:
            version = qualifier if qualifier.isdigit() else \
                api.get_alias(name, qualifier)["FunctionVersion"]
            if version == LATEST:
                return self.configuration(name, region_of(req))
            return api.get_version(name, version)
        except VersionError as exc:
            raise _version_error(exc) from None

    def require_known(self, name: str) -> None:
        """ResourceNotFoundException unless the function is created here or from a folder."""
        if not self.store.exists(name) and self.functions.get(name) is None:
            raise ApiError(404, "ResourceNotFoundException", f"Function not found: {name}")

    # --- going live -------------------------------------------------------------------------
    async def go_live(self, name: str, creating: bool) -> None:
        """Reload the one function on the supervisor's admin channel and keep the outcome in
        its status.json: Active / Failed (a create), Successful / Failed (a change), or
        Pending / InProgress when it takes longer than LIVE_WAIT."""
        outcome = await reload_functions(self.config.stateDir, [name])
        entry = (outcome.get("functions") or {}).get(name) or {}
        action = entry.get("action")
        reason = entry.get("reason") or "; ".join(outcome.get("errors") or []) or \
            (outcome.get("error") or {}).get("message", "")
        if action in ("added", "replaced", "unchanged"):
            status = {"State": "Active", "LastUpdateStatus": "Successful"}
        elif action == "failed" or (action is None and "error" in outcome and
                                    outcome["error"].get("type") != "Timeout"):
            log.warning("function %s did not go live: %s", name, reason)
            if creating:
                status = {"State": "Failed", "StateReason": reason,
                          "StateReasonCode": "InvalidConfiguration",
                          "LastUpdateStatus": "Failed", "LastUpdateStatusReason": reason,
                          "LastUpdateStatusReasonCode": "InvalidConfiguration"}
            else:   # the previous code keeps serving
                status = {"State": "Active", "LastUpdateStatus": "Failed",
                          "LastUpdateStatusReason": reason,
                          "LastUpdateStatusReasonCode": "InvalidConfiguration"}
        else:
            status = {"State": "Pending" if creating else "Active",
                      "LastUpdateStatus": "InProgress"}
            if reason:
                status["LastUpdateStatusReason"] = reason
        await asyncio.to_thread(self.store.write_status, name, status)


async def reload_functions(state_dir: str, names: list[str]) -> dict:
    """The supervisor's `reload` of these functions (sora.control.admin), as its report; an
    `error` answer when the admin channel is missing or does not answer in LIVE_WAIT."""
    try:
        return await admin.request_async(state_dir, admin.OP_RELOAD,
                                         {"functions": names, "setup": "auto"}, LIVE_WAIT)
    except admin.AdminUnavailable as exc:   # not running, or still at it after LIVE_WAIT
        return {"error": {"type": "Timeout", "message": f"the change is still going live "
                          f"({exc})"}}
    except Exception as exc:   # the admin channel's own failure: reported, not a 500
        log.warning("reload of %s on the admin channel failed: %s", names, exc)
        return {"error": {"type": "Unavailable", "message": f"the supervisor could not be "
                          f"asked to load the change ({type(exc).__name__}: {exc})"}}


def _store_error(exc: StoreError | ZipRefused) -> ApiError:
    return ApiError(exc.status, exc.error_type, str(exc))


class FunctionsResource(ManagementRoute):
    """`/2015-03-31/functions`: ListFunctions (GET), CreateFunction (POST)."""

    async def on_get(self, req, resp) -> None:
        names = sorted(set(self.store.names()) | {
            name for name in self.functions.names()
            if self.path_function(name) is not None} | set(self.functions.broken))
        marker = req.get_param("Marker")
        if marker:
            names = [name for name in names if name > marker]
        limit = req.get_param_as_int("MaxItems", min_value=1, max_value=10000) or 50
        page = names[:limit]
        answer = {"Functions": [self.configuration(name, region_of(req)) for name in page]}
        if len(names) > limit:
            answer["NextMarker"] = page[-1]
        self.answer(req, resp, 200, answer)

    async def on_post(self, req, resp) -> None:
        body = await self.body_of(req)
        raw_name = body.get("FunctionName")
        if not isinstance(raw_name, str):
            raise ApiError(400, "InvalidParameterValueException",
                           "FunctionName: required (a string)")
        name, qualifier = parse_name(raw_name)
        if qualifier is not None:
            raise ApiError(400, "InvalidParameterValueException",
                           "FunctionName: expected a name without a qualifier")
        config, fields = settings_of(body, None, creating=True)
        check_publish(body)
        code = body.get("Code") if isinstance(body.get("Code"), dict) else {}
        blob = zip_of(code.get("ZipFile"), self.store.limits)
        if self.store.exists(name):
            raise ApiError(409, "ResourceConflictException", f"Function already exist: {name}")
        if self.path_function(name) is not None or name in self.functions.broken:
            raise ApiError(409, "ResourceConflictException", (
                f"Function already exist: {name} (from functionPaths; choose another name)"))
        try:
            await asyncio.to_thread(self.store.create, name, blob, config, fields)
        except (StoreError, ZipRefused) as exc:
            raise _store_error(exc) from None
        log.info("function %s created through the management API", name)
        await self.go_live(name, creating=True)
        self.answer(req, resp, 201, await self.published(req, name, body))

    async def published(self, req, name: str, body: dict) -> dict:
        """The configuration to answer: with `Publish` (and the code live), the version
        published from it, as Lambda answers."""
        configuration = self.configuration(name, region_of(req))
        if not body.get("Publish") or configuration.get("State") != "Active" or \
                configuration.get("LastUpdateStatus") != "Successful":
            return configuration
        description = body.get("Description") if isinstance(body.get("Description"),
                                                            str) else ""
        try:
            return await versions_api(self, req).publish_version(name, description)
        except VersionError as exc:
            raise _version_error(exc) from None


def check_publish(body: dict) -> None:
    if not isinstance(body.get("Publish", False), bool):
        raise ApiError(400, "InvalidParameterValueException", "Publish: expected true or false")


class FunctionResource(ManagementRoute):
    """`/2015-03-31/functions/{name}`: GetFunction (GET), DeleteFunction (DELETE)."""

    async def on_get(self, req, resp, name: str) -> None:
        name, qualifier = parse_name(name)
        configuration = self.qualified_configuration(req, name, qualifier or
                                                     req.get_param("Qualifier"))
        answer = {"Configuration": configuration, "Tags": {},
                  "Code": {"RepositoryType": "Sora"}}
        self.answer(req, resp, 200, answer)

    async def on_delete(self, req, resp, name: str) -> None:
        name, qualifier = parse_name(name)
        qualifier = qualifier or req.get_param("Qualifier")
        if qualifier and qualifier != LATEST:
            raise ApiError(400, "InvalidParameterValueException", (
                f"Qualifier: deleting one version is not supported ({qualifier}); versions "
                f"past versions.keep are pruned, except those an alias names"))
        self.require_managed(name, "remove its folder from functionPaths")
        try:
            await asyncio.to_thread(self.store.delete, name)
            # Its versions and aliases go with it, as on Lambda.
            await asyncio.to_thread(versions_api(self, req).delete_function, name)
        except StoreError as exc:
            raise _store_error(exc) from None
        except VersionError as exc:
            raise _version_error(exc) from None
        log.info("function %s deleted through the management API", name)
        await reload_functions(self.config.stateDir, [name])
        self.answer(req, resp, 204, None)


class FunctionCodeResource(ManagementRoute):
    """`PUT /2015-03-31/functions/{name}/code`: UpdateFunctionCode."""

    async def on_put(self, req, resp, name: str) -> None:
        name, _ = parse_name(name)
        body = await self.body_of(req)
        self.require_managed(name, "change its code in its folder")
        if body.get("DryRun"):
            zip_of(body.get("ZipFile"), self.store.limits)
            self.answer(req, resp, 200, self.configuration(name, region_of(req)))
            return
        blob = zip_of(body.get("ZipFile"), self.store.limits)
        check_publish(body)
        _revision_matches(self.store, name, body)
        try:
            await asyncio.to_thread(self.store.update_code, name, blob, {})
        except (StoreError, ZipRefused) as exc:
            raise _store_error(exc) from None
        log.info("code of function %s updated through the management API", name)
        await self.go_live(name, creating=False)
        self.answer(req, resp, 200, await FunctionsResource.published(self, req, name, body))


class FunctionConfigurationResource(ManagementRoute):
    """`/2015-03-31/functions/{name}/configuration`: GetFunctionConfiguration (GET),
    UpdateFunctionConfiguration (PUT)."""

    async def on_get(self, req, resp, name: str) -> None:
        name, qualifier = parse_name(name)
        self.answer(req, resp, 200, self.qualified_configuration(
            req, name, qualifier or req.get_param("Qualifier")))

    async def on_put(self, req, resp, name: str) -> None:
        name, _ = parse_name(name)
        body = await self.body_of(req)
        self.require_managed(name, "change its settings in its sora.yaml")
        document = self.store.read(name) or {}
        config, fields = settings_of(body, document.get("config", {}).get("language"),
                                     creating=False)
        _revision_matches(self.store, name, body)
        try:
            await asyncio.to_thread(self.store.update_config, name, config, fields)
        except StoreError as exc:
            raise _store_error(exc) from None
        log.info("settings of function %s updated through the management API", name)
        await self.go_live(name, creating=False)
        self.answer(req, resp, 200, self.configuration(name, region_of(req)))


def versions_api(route: ManagementRoute, req) -> VersionsApi:
    """The versions' Python API (sora.versions.api), its ARNs in the caller's region."""
    return VersionsApi(route.config.stateDir, region_of(req), store=route.config.store)


def _version_error(exc: VersionError) -> ApiError:
    return ApiError(exc.status, exc.error_type, str(exc))


class VersionsResource(ManagementRoute):
    """`/2015-03-31/functions/{name}/versions`: PublishVersion (POST),
    ListVersionsByFunction (GET). Functions from functionPaths publish too. The versions'
    and aliases' store reads and writes run off the event loop (on PostgreSQL each is a round
    trip, up to the pool's wait while the database is down)."""

    async def on_post(self, req, resp, name: str) -> None:
        name, _ = parse_name(name)
        body = await self.body_of(req)
        self.require_known(name)
        description = body.get("Description", "")
        if not isinstance(description, str) or len(description) > 256:
            raise ApiError(400, "InvalidParameterValueException",
                           "Description: expected a string of at most 256 characters")
        sha = body.get("CodeSha256")
        if sha is not None and not isinstance(sha, str):
            raise ApiError(400, "InvalidParameterValueException",
                           "CodeSha256: expected a string")
        document = self.store.read(name)
        if sha and document is not None:
            # A created function's CodeSha256 is its zip's (as Lambda's); the versions' store
            # hashes the copied folder: the precondition is checked against the zip's here.
            current = document.get("lambda", {}).get("CodeSha256")
            if sha != current:
                raise ApiError(412, "PreconditionFailedException", (
                    f"CodeSha256: the function's code is {current}, not {sha} (it changed "
                    f"since it was read)"))
            sha = None
        _revision_matches(self.store, name, body)
        try:
            version = await versions_api(self, req).publish_version(name, description, sha)
        except VersionError as exc:
            raise _version_error(exc) from None
        log.info("function %s: version %s published through the management API", name,
                 version.get("Version"))
        self.answer(req, resp, 201, version)

    async def on_get(self, req, resp, name: str) -> None:
        name, _ = parse_name(name)
        self.require_known(name)
        latest = self.functions.get(name)
        try:
            versions = (await asyncio.to_thread(versions_api(self, req).list_versions, latest)
                        if latest else [])
        except VersionError as exc:
            raise _version_error(exc) from None
        # $LATEST as GetFunction shows it (a created function's own Runtime and fields).
        versions[:1] = [self.configuration(name, region_of(req))]
        self.answer(req, resp, 200, _page(req, versions, "Versions", "Version"))


def _page(req, items: list[dict], key: str, by: str) -> dict:
    """Lambda's Marker/MaxItems paging: the marker is the last item's `by` of a page."""
    marker = req.get_param("Marker")
    if marker:
        at = next((i for i, item in enumerate(items) if str(item.get(by)) == marker), None)
        items = items[at + 1:] if at is not None else []
    limit = req.get_param_as_int("MaxItems", min_value=1, max_value=10000) or 50
    answer: dict = {key: items[:limit]}
    if len(items) > limit:
        answer["NextMarker"] = str(items[limit - 1].get(by))
    return answer


class AliasesResource(ManagementRoute):
    """`/2015-03-31/functions/{name}/aliases`: CreateAlias (POST), ListAliases (GET)."""

    async def on_post(self, req, resp, name: str) -> None:
        name, _ = parse_name(name)
        body = await self.body_of(req)
        self.require_known(name)
        alias, version = body.get("Name"), body.get("FunctionVersion")
        if not isinstance(alias, str) or not isinstance(version, str):
            raise ApiError(400, "InvalidParameterValueException",
                           "Name and FunctionVersion: required (strings)")
        try:
            answer = await asyncio.to_thread(
                versions_api(self, req).create_alias, name, alias, version,
                _description(body), body.get("RoutingConfig"))
        except VersionError as exc:
            raise _version_error(exc) from None
        self.answer(req, resp, 201, answer)

    async def on_get(self, req, resp, name: str) -> None:
        name, _ = parse_name(name)
        self.require_known(name)
        try:
            aliases = await asyncio.to_thread(versions_api(self, req).list_aliases, name,
                                              req.get_param("FunctionVersion"))
        except VersionError as exc:
            raise _version_error(exc) from None
        self.answer(req, resp, 200, _page(req, aliases, "Aliases", "Name"))


class AliasResource(ManagementRoute):
    """`/2015-03-31/functions/{name}/aliases/{alias}`: GetAlias (GET), UpdateAlias (PUT),
    DeleteAlias (DELETE)."""

    async def on_get(self, req, resp, name: str, alias: str) -> None:
        name, _ = parse_name(name)
        self.require_known(name)
        try:
            answer = await asyncio.to_thread(versions_api(self, req).get_alias, name, alias)
        except VersionError as exc:
            raise _version_error(exc) from None
        self.answer(req, resp, 200, answer)

    async def on_put(self, req, resp, name: str, alias: str) -> None:
        name, _ = parse_name(name)
        body = await self.body_of(req)
        self.require_known(name)
        version = body.get("FunctionVersion")
        if version is not None and not isinstance(version, str):
            raise ApiError(400, "InvalidParameterValueException",
                           "FunctionVersion: expected a string")
        try:
            answer = await asyncio.to_thread(
                versions_api(self, req).update_alias, name, alias, version,
                _description(body) if "Description" in body else None,
                body.get("RoutingConfig"), body.get("RevisionId"))
        except VersionError as exc:
            raise _version_error(exc) from None
        self.answer(req, resp, 200, answer)

    async def on_delete(self, req, resp, name: str, alias: str) -> None:
        name, _ = parse_name(name)
        self.require_known(name)
        try:
            await asyncio.to_thread(versions_api(self, req).delete_alias, name, alias)
        except VersionError as exc:
            raise _version_error(exc) from None
        self.answer(req, resp, 204, None)


def _description(body: dict) -> str:
    description = body.get("Description", "")
    if not isinstance(description, str) or len(description) > 256:
        raise ApiError(400, "InvalidParameterValueException",
                       "Description: expected a string of at most 256 characters")
    return description


def _revision_matches(store: ManagedStore, name: str, body: dict) -> None:
    """`RevisionId`: the change applies only to the revision the caller read, as on Lambda."""
    wanted = body.get("RevisionId")
    if wanted:
        current = (store.read(name) or {}).get("lambda", {}).get("RevisionId")
        if wanted != current:
            raise ApiError(412, "PreconditionFailedException", (
                f"RevisionId: the function's revision is {current}, not {wanted} (it changed "
                f"since it was read)"))


def add_routes(app: falcon.asgi.App, config: HostConfig, functions: FunctionTable) -> None:
    """The management API's routes on the gateway's app."""
    limits = ZipLimits(max_zipped=config.managedFunctions.maxZipMB * MB,
                       max_unzipped=config.managedFunctions.maxUnzippedMB * MB,
                       max_entries=config.managedFunctions.maxFiles)
    store = ManagedStore(config.stateDir, limits)
    base = "/2015-03-31/functions"
    app.add_route(base, FunctionsResource(config, functions, store))
    app.add_route(base + "/{name}", FunctionResource(config, functions, store))
    app.add_route(base + "/{name}/code", FunctionCodeResource(config, functions, store))
    app.add_route(base + "/{name}/configuration",
                  FunctionConfigurationResource(config, functions, store))
    app.add_route(base + "/{name}/versions", VersionsResource(config, functions, store))
    app.add_route(base + "/{name}/aliases", AliasesResource(config, functions, store))
    app.add_route(base + "/{name}/aliases/{alias}", AliasResource(config, functions, store))

