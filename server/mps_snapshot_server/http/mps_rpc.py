"""MPS's HTTP RPC protocol (``mts`` 2014-06-18) on path ``/``, so Alibaba Cloud's own SDKs and
the ``aliyun`` CLI call this service unchanged but for endpoint and keys.

A call goes: parameters (query string and form or JSON body, each key once, bounded) ->
Action and Version -> signature (V1 or V3, the same principals, clock window and nonce store
as gRPC's signatures) -> rate limit -> MPS JSON parameters into the gRPC request message
(client/mps_snapshot_client/mps_json.py) -> the gRPC servicer's own method body, called directly (same
authorization, use cases and converters; no gRPC in between) -> the response message in MPS's
wire format (wire.py). Errors go out in MPS's envelope with the HTTP status of the one error
table (server/mps_snapshot_server/rpc/errors.py).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mps_snapshot_client import mps_json
from mps_snapshot_client.api import pipeline_service_pb2 as pps
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.domain.errors import (
    ErrorCode,
    InternalError,
    InvalidParameter,
    MpsError,
    Throttled,
    Unauthenticated,
)
from mps_snapshot_server.domain.ids import new_request_id
from mps_snapshot_server.http import signing, wire
from mps_snapshot_server.observability.logging import request_id_var
from mps_snapshot_server.rpc.calls import Call
from mps_snapshot_server.rpc.errors import http_status_for
from mps_snapshot_server.rpc.pipeline_servicer import PipelineServicer
from mps_snapshot_server.rpc.snapshot_servicer import SnapshotServicer
from mps_snapshot_server.security.authn import ANONYMOUS, MAX_NONCE_LENGTH, Principal
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.service.jobs import JobService
from mps_snapshot_server.service.pipelines import PipelineRegistry

log = logging.getLogger("mps_snapshot.http")

API_VERSION = "2014-06-18"
#: Largest raw query string and request body accepted; a SnapshotConfig with 1,000 time
#: points fits with room to spare. Larger is refused in MPS's envelope before any parsing.
MAX_QUERY_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
#: Most parameters in one call (the largest MPS call has about 15).
MAX_PARAMETERS = 64
#: Deepest nesting of arrays and objects accepted in any JSON a caller sends (the body or a
#: parameter's JSON text). MPS's deepest document (SnapshotConfig.TileOut...) is 4 levels; the
#: limit is checked before json.loads, whose recursion would otherwise raise RecursionError.
MAX_JSON_DEPTH = 32
FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"

#: Parameters of the call rather than of the action: Alibaba Cloud's common parameters, and
#: SignatureType, which the legacy SDK sends empty (a bearer token, its other use, is refused
#: in authenticate).
IGNORED_PARAMETERS = mps_json.COMMON_PARAMETERS | {"SignatureType"}

#: MPS's pipeline ExtendConfig keys this service accepts and ignores (it has no MPS speed tiers).
_MPS_EXTEND_KEYS = frozenset({"IsBoostNew", "MaxMultiSpeed", "MultiSpeedDowngradePolicy"})
_OUR_EXTEND_KEYS = frozenset({"MaxConcurrentJobs", "QueueCapacity"})
#: Where a signed request keeps (AccessKeyId, nonce) until it is admitted and the nonce used up.
_NONCE = web.RequestKey("mps.nonce", tuple[str, str])


@dataclass(frozen=True)
class Action:
    """An MPS action: its gRPC request message, the servicer method that serves it, and the
    parameters MPS's API metadata marks required."""

    request: type[Message]
    service: str  # "snapshot" or "pipeline"
    required: tuple[str, ...] = ()


ACTIONS: dict[str, Action] = {
    "SubmitSnapshotJob": Action(sps.SubmitSnapshotJobRequest, "snapshot", ("Input", "SnapshotConfig")),
    "QuerySnapshotJobList": Action(sps.QuerySnapshotJobListRequest, "snapshot"),
    "CancelSnapshotJob": Action(sps.CancelSnapshotJobRequest, "snapshot", ("SnapshotJobId",)),
    "AddPipeline": Action(pps.AddPipelineRequest, "pipeline", ("Name",)),
    "UpdatePipeline": Action(pps.UpdatePipelineRequest, "pipeline", ("PipelineId", "Name", "State")),
    "QueryPipelineList": Action(pps.QueryPipelineListRequest, "pipeline", ("PipelineIds",)),
    "SearchPipeline": Action(pps.SearchPipelineRequest, "pipeline"),
    "DeletePipeline": Action(pps.DeletePipelineRequest, "pipeline", ("PipelineId",)),
}


class _NoDeadline:
    """Stands in for the gRPC context the servicer reads a deadline from: an HTTP call has
    none, so a sync snapshot gets the server's own limit (sync_timeout_s)."""

    def time_remaining(self) -> None:
        return None


@dataclass(frozen=True)
class Params:
    """A call's parameters: the query string's and the body's, each key at most once overall."""

    query: list[tuple[str, str]]
    body: list[tuple[str, str]]
    raw_body: bytes

    def all(self) -> dict[str, str]:
        return dict(self.query + self.body)


def _pairs(text: str, where: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_PARAMETERS)
    except UnicodeDecodeError:
        raise InvalidParameter(
            f"The {where} is not valid UTF-8 after percent-decoding; encode parameters as UTF-8 (RFC 3986).",
            code=ErrorCode.INVALID_PARAMETER_ENCODING,
        ) from None
    except ValueError:
        raise InvalidParameter(
            f"The {where} has more than {MAX_PARAMETERS} parameters.", code=ErrorCode.INVALID_PARAMETER_TOO_MANY
        ) from None


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, counted without recursion
    (brackets inside strings do not count; the text need not be valid JSON)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _loads(text: str, what: str, field: str | None = None) -> Any:
    """json.loads with duplicate keys and nesting deeper than MAX_JSON_DEPTH refused."""
    if (depth := json_depth(text)) > MAX_JSON_DEPTH:
        message = f"{what} nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}; send flat MPS JSON."
        code = ErrorCode.INVALID_PARAMETER_JSON_FORMAT_INVALID
        raise InvalidParameter.field(field, message, code=code) if field else InvalidParameter(message, code=code)
    return json.loads(text, object_pairs_hook=_no_duplicates)


def _json_pairs(raw: bytes) -> list[tuple[str, str]]:
    try:
        doc = _loads(raw.decode("utf-8"), "The JSON body")
    except UnicodeDecodeError:
        raise InvalidParameter("The JSON body is not UTF-8.", code=ErrorCode.INVALID_PARAMETER_ENCODING) from None
    except json.JSONDecodeError as exc:
        raise InvalidParameter(
            f"The JSON body does not parse: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            code=ErrorCode.INVALID_PARAMETER_JSON_FORMAT_INVALID,
        ) from None
    if not isinstance(doc, dict):
        raise InvalidParameter(
            "A JSON body must be an object of parameters.", code=ErrorCode.INVALID_PARAMETER_JSON_FORMAT_INVALID
        )
    return [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in doc.items()]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidParameter(
                f"The key {key[:64]!r} appears twice in one JSON object; give each key once.",
                code=ErrorCode.INVALID_PARAMETER_JSON_FORMAT_INVALID,
            )
        seen[key] = value
    return seen


async def read_params(request: web.Request) -> Params:
    raw_query = request.rel_url.raw_query_string
    if len(raw_query) > MAX_QUERY_BYTES:
        raise InvalidParameter(
            f"The query string is {len(raw_query)} bytes, over the {MAX_QUERY_BYTES}-byte limit.",
            code=ErrorCode.INVALID_PARAMETER_TOO_LARGE,
        )
    if not raw_query.isascii():
        raise InvalidParameter(
            "The query string has raw non-ASCII bytes; percent-encode parameters (RFC 3986).",
            code=ErrorCode.INVALID_PARAMETER_ENCODING,
        )
    query = _pairs(raw_query, "query string")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise InvalidParameter(
            f"The body is {request.content_length} bytes, over the {MAX_BODY_BYTES}-byte limit.",
            code=ErrorCode.INVALID_PARAMETER_TOO_LARGE,
        )
    try:
        raw_body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise InvalidParameter(
            f"The body is over the {MAX_BODY_BYTES}-byte limit.", code=ErrorCode.INVALID_PARAMETER_TOO_LARGE
        ) from None
    body: list[tuple[str, str]] = []
    if raw_body:
        kind = request.content_type
        if kind == FORM_TYPE:
            try:
                text = raw_body.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidParameter(
                    "The form body has raw non-ASCII bytes; percent-encode parameters (RFC 3986).",
                    code=ErrorCode.INVALID_PARAMETER_ENCODING,
                ) from None
            body = _pairs(text, "form body")
        elif kind == JSON_TYPE:
            body = _json_pairs(raw_body)
        else:
            raise InvalidParameter(
                f"A body of type {kind[:64]!r} is not understood; send parameters in the query string, "
                f"or a {FORM_TYPE} or {JSON_TYPE} body.",
                code=ErrorCode.INVALID_PARAMETER_CONTENT_TYPE,
            )
    seen: set[str] = set()
    for key, _ in query + body:
        if key in seen:
            raise InvalidParameter(
                f"The parameter {key[:64]!r} is given more than once; give each parameter once.",
                code=ErrorCode.INVALID_PARAMETER_DUPLICATE,
            )
        seen.add(key)
    if len(seen) > MAX_PARAMETERS:
        raise InvalidParameter(f"More than {MAX_PARAMETERS} parameters.", code=ErrorCode.INVALID_PARAMETER_TOO_MANY)
    return Params(query, body, raw_body)


def _one_of(header: str | None, param: str | None, name: str, header_name: str) -> str:
    if header is not None and param is not None and header != param:
        raise InvalidParameter(
            f"The {header_name} header ({header[:64]!r}) and the {name} parameter ({param[:64]!r}) differ.",
            code=f"InvalidParameter.{name}",
        )
    value = header if header is not None else param
    if not value:
        raise InvalidParameter(
            f"{name} is required (the {name} parameter or the {header_name} header).", code=f"MissingParameter.{name}"
        )
    return value


def _header(request: web.Request, name: str) -> str:
    """A header's value for a V3 canonical request: repeated headers joined, as the SDK does."""
    return ",".join(sorted(v.strip() for v in request.headers.getall(name, [])))


class MpsRpc:
    """The ``/`` handler. ``add_routes`` mounts it on an HttpListener."""

    def __init__(
        self, jobs: JobService, pipelines: PipelineRegistry, guard: Guard, *, max_in_flight: int = 1000
    ) -> None:
        self.guard = guard
        #: Calls in progress at once (the gRPC listener's max_concurrent_rpcs, counted apart).
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._servicers: dict[str, object] = {
            "snapshot": SnapshotServicer(jobs, guard),
            "pipeline": PipelineServicer(pipelines, guard),
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/", self.handle)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Any other path: MPS's answer to a path it does not serve."""
        request_id = new_request_id()
        error = MpsError(
            f"Nothing is served at {request.path[:80]!r}; MPS actions are called on '/'.",
            code=ErrorCode.INVALID_ACTION_NOT_FOUND,
        )
        return self._error(request, error, request_id)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        request_id_var.set(request_id)
        started = time.monotonic()
        claimed = request.headers.get("x-acs-action") or request.query.get("Action", "")
        action_name = claimed if claimed in ACTIONS else "HTTP"  # no caller text in the log
        try:
            if request.method not in ("GET", "POST"):
                raise MpsError(
                    f"HTTP method {request.method} is not supported; use GET or POST.",
                    code=ErrorCode.UNSUPPORTED_HTTP_METHOD,
                )
            if self.in_flight >= self.max_in_flight:
                raise Throttled(
                    f"The server has {self.max_in_flight} calls in progress, its limit; retry shortly.",
                    code=ErrorCode.THROTTLING_CONCURRENCY,
                    retry_after=1.0,
                )
            self.in_flight += 1
            try:
                body = await self._call(request, request_id)
            finally:
                self.in_flight -= 1
        except MpsError as exc:
            log.info("%s %s %.1f ms: %s", action_name, exc.code, (time.monotonic() - started) * 1000, exc.message)
            return self._error(request, exc, request_id)
        except Exception:
            log.exception("unexpected error in HTTP %s", action_name)
            error = InternalError("An internal error occurred; quote the RequestId when reporting it.")
            return self._error(request, error, request_id)
        log.info("%s OK %.1f ms", action_name, (time.monotonic() - started) * 1000)
        return web.Response(
            text=wire.dumps(body),
            content_type="application/json",
            charset="utf-8",
            headers={"x-acs-request-id": request_id},
        )

    async def _call(self, request: web.Request, request_id: str) -> dict[str, Any]:
        params = await read_params(request)
        values = params.all()
        name = _one_of(request.headers.get("x-acs-action"), values.get("Action"), "Action", "x-acs-action")
        version = _one_of(request.headers.get("x-acs-version"), values.get("Version"), "Version", "x-acs-version")
        if version != API_VERSION:
            raise InvalidParameter(
                f"Version {version[:32]!r} is not served; this is MPS API version {API_VERSION}.",
                code=ErrorCode.INVALID_VERSION,
            )
        if values.get("Format", "json").lower() != "json":
            raise InvalidParameter("Only Format=JSON is served (XML is not).", code=ErrorCode.INVALID_PARAMETER_FORMAT)
        principal = self.authenticate(request, params)
        action = ACTIONS.get(name)
        if action is None:
            raise MpsError(
                f"The action {name[:64]!r} is not served; this service implements " + ", ".join(sorted(ACTIONS)) + ".",
                code=ErrorCode.INVALID_ACTION_NOT_FOUND,
            )
        self.guard.throttle(principal, name)
        if (signed := request.get(_NONCE)) is not None:
            self.guard.authenticator.use_nonce(*signed)  # admitted: the nonce is used up
        message = build_request(name, action, values)
        servicer = self._servicers[action.service]
        method: Callable[..., Awaitable[Message]] = inspect.unwrap(getattr(type(servicer), name))
        call = Call(request_id=request_id, principal=principal, method=name, guard=self.guard)
        response = await method(servicer, message, _NoDeadline(), call)
        return wire.encode(response)

    # -- authentication ----------------------------------------------------------------

    def authenticate(self, request: web.Request, params: Params) -> Principal:
        authn = self.guard.authenticator
        if not authn.enabled:
            # No principals: like gRPC, anyone who can reach the (loopback-only) port may
            # call, and the SDKs' signatures over placeholder keys are not checked.
            return ANONYMOUS
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith(signing.V3_ALGORITHM):
            return self._v3(request, params, authorization)
        values = params.all()
        if values.get("SignatureType") or "BearerToken" in values:
            raise Unauthenticated(
                "Bearer tokens are not accepted here; sign with an AccessKey (V1 or V3).",
                code=ErrorCode.INCOMPLETE_SIGNATURE,
            )
        if "Signature" in values:
            return self._v1(request, params, values)
        raise Unauthenticated(
            "The call is not signed: sign it with an AccessKey as Alibaba Cloud's SDKs do (V1 "
            "Signature parameter, or V3 'Authorization: ACS3-HMAC-SHA256 ...').",
            code=ErrorCode.MISSING_ACCESS_KEY_ID,
        )

    def _secret_of(self, key_id: str) -> tuple[Principal, str]:
        principal = self.guard.authenticator.principal(key_id)
        if not principal.secret:
            raise Unauthenticated(
                f"The AccessKeyId {key_id[:64]!r} has no access_key_secret_file on this server, which Alibaba "
                "Cloud signatures need; use gRPC with it, or configure the secret (docs/security.md).",
                code=ErrorCode.INVALID_ACCESS_KEY_ID_INACTIVE,
            )
        return principal, principal.secret

    def _v1(self, request: web.Request, params: Params, values: Mapping[str, str]) -> Principal:
        missing = [k for k in ("AccessKeyId", "Timestamp", "SignatureNonce") if not values.get(k)]
        if missing:
            raise Unauthenticated(f"A V1 signature needs {', '.join(missing)}.", code=ErrorCode.INCOMPLETE_SIGNATURE)
        if values.get("SignatureMethod") != "HMAC-SHA1" or values.get("SignatureVersion") != "1.0":
            raise Unauthenticated(
                "Only SignatureMethod=HMAC-SHA1 with SignatureVersion=1.0 (or V3 ACS3-HMAC-SHA256) is accepted.",
                code=ErrorCode.INCOMPLETE_SIGNATURE,
            )
        nonce = values["SignatureNonce"]
        if len(nonce) > MAX_NONCE_LENGTH:
            raise Unauthenticated(
                f"SignatureNonce must be 1-{MAX_NONCE_LENGTH} characters.", code=ErrorCode.INCOMPLETE_SIGNATURE
            )
        key_id = values["AccessKeyId"]
        principal, secret = self._secret_of(key_id)
        if not signing.v1_matches(secret, request.method, params.query + params.body, values["Signature"]):
            raise Unauthenticated(
                "The V1 signature does not match: check the AccessKeySecret, and that every parameter "
                "is signed as sent (HMAC-SHA1 over METHOD&%2F&<sorted, RFC 3986-encoded parameters>).",
                code=ErrorCode.SIGNATURE_DOES_NOT_MATCH,
            )
        self.guard.authenticator.check_fresh(key_id, values["Timestamp"], nonce, "Timestamp", "SignatureNonce")
        request[_NONCE] = (key_id, nonce)
        return principal

    def _v3(self, request: web.Request, params: Params, authorization: str) -> Principal:
        auth = signing.parse_v3_authorization(authorization)
        if auth is None:
            raise Unauthenticated(
                "The Authorization header must be 'ACS3-HMAC-SHA256 Credential=<AccessKeyId>,"
                "SignedHeaders=<h1;h2...>,Signature=<hex>'.",
                code=ErrorCode.INCOMPLETE_SIGNATURE,
            )
        unsigned = sorted(signing.V3_REQUIRED_HEADERS - set(auth.signed_headers))
        if unsigned:
            raise Unauthenticated(
                f"SignedHeaders must include {', '.join(unsigned)}.", code=ErrorCode.INCOMPLETE_SIGNATURE
            )
        nonce = request.headers.get("x-acs-signature-nonce", "")
        if not nonce or len(nonce) > MAX_NONCE_LENGTH:
            raise Unauthenticated(
                f"x-acs-signature-nonce must be 1-{MAX_NONCE_LENGTH} characters.", code=ErrorCode.INCOMPLETE_SIGNATURE
            )
        principal, secret = self._secret_of(auth.access_key_id)
        payload_hash = request.headers.get("x-acs-content-sha256", "")
        if payload_hash.lower() != hashlib.sha256(params.raw_body).hexdigest():
            raise Unauthenticated(
                "x-acs-content-sha256 is not the SHA-256 of the body (hex); the body was changed or mis-hashed.",
                code=ErrorCode.SIGNATURE_DOES_NOT_MATCH,
            )
        headers = {h: _header(request, h) for h in auth.signed_headers}
        canonical = signing.v3_canonical_request(
            request.method, "/", params.query, headers, auth.signed_headers, payload_hash.lower()
        )
        if not signing.v3_matches(secret, canonical, auth.signature):
            raise Unauthenticated(
                "The ACS3-HMAC-SHA256 signature does not match: check the AccessKeySecret, and that the "
                "request is sent as signed.",
                code=ErrorCode.SIGNATURE_DOES_NOT_MATCH,
            )
        self.guard.authenticator.check_fresh(
            auth.access_key_id,
            request.headers.get("x-acs-date", ""),
            nonce,
            "x-acs-date",
            "x-acs-signature-nonce",
        )
        request[_NONCE] = (auth.access_key_id, nonce)
        return principal

    # -- answers -----------------------------------------------------------------------

    def _error(self, request: web.Request, error: MpsError, request_id: str) -> web.Response:
        headers = {"x-acs-request-id": request_id}
        if error.retry_after is not None:
            # In milliseconds, a positive integer: the new SDK then raises ThrottlingException.
            headers["x-acs-retry-after"] = str(max(1, math.ceil(error.retry_after * 1000)))
        host = request.headers.get("Host", "")[:128]
        return web.Response(
            text=wire.dumps(wire.error_body(error, request_id, host)),
            status=http_status_for(error.code),
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )


def _json_param(name: str, text: str) -> Any:
    try:
        doc = _loads(text, name, field=name)
    except json.JSONDecodeError as exc:
        raise InvalidParameter.field(
            name,
            f"{name} is not valid JSON: {exc.msg} at column {exc.colno}; send the object as JSON text.",
            code=ErrorCode.INVALID_PARAMETER_JSON_FORMAT_INVALID,
        ) from None
    if not isinstance(doc, dict):
        raise InvalidParameter.field(
            name, f"{name} must be a JSON object.", code=ErrorCode.INVALID_PARAMETER_JSON_FORMAT_INVALID
        )
    return doc


def _extend_config(values: dict[str, Any]) -> None:
    """UpdatePipeline's ExtendConfig (JSON text) may carry this service's pipeline limits."""
    text = values.pop("ExtendConfig", None)
    if text is None:
        return
    doc = _json_param("ExtendConfig", text)
    unknown = sorted(set(doc) - _MPS_EXTEND_KEYS - _OUR_EXTEND_KEYS)
    if unknown:
        raise InvalidParameter.field(
            "ExtendConfig",
            f"ExtendConfig has unknown keys {', '.join(unknown)}; this service reads "
            + ", ".join(sorted(_OUR_EXTEND_KEYS))
            + ".",
        )
    for key in _OUR_EXTEND_KEYS & set(doc):
        if key in values:
            raise InvalidParameter.field(key, f"{key} is given both directly and in ExtendConfig; give it once.")
        values[key] = doc[key]


def build_request(name: str, action: Action, values: Mapping[str, str]) -> Message:
    """The gRPC request message of an MPS call's parameters."""
    business: dict[str, Any] = {k: v for k, v in values.items() if k not in IGNORED_PARAMETERS}
    for required in action.required:
        if not business.get(required):
            raise InvalidParameter.field(
                required, f"{required} is required for {name}.", code=f"MissingParameter.{required}"
            )
    if name in ("AddPipeline", "UpdatePipeline"):
        _extend_config(business)
    desc = action.request.DESCRIPTOR
    for field in desc.fields:
        text = business.get(field.json_name)
        if (
            isinstance(text, str)
            and field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type is not None
            and not field.message_type.full_name.startswith("google.protobuf.")
        ):
            business[field.json_name] = _json_param(field.json_name, text) if text.strip() else {}
    known = {f.json_name for f in desc.fields}
    unknown = sorted(set(business) - known)
    if unknown:
        raise InvalidParameter(
            f"{name} has no parameter {', '.join(u[:64] for u in unknown[:5])}; its parameters are "
            + ", ".join(sorted(known))
            + ".",
            code=ErrorCode.INVALID_PARAMETER_UNKNOWN_PARAMETER,
        )
    try:
        return mps_json.parse(business, action.request())
    except RecursionError:
        # JSON text nested inside a parameter's JSON (MPS sends objects as strings) is parsed
        # by mps_json; a string nested deeper than the parser can recurse is the caller's mistake.
        raise InvalidParameter(
            f"A parameter of {name} holds JSON nested deeper than {MAX_JSON_DEPTH} levels; send flat MPS JSON.",
            code=ErrorCode.INVALID_PARAMETER_JSON_FORMAT_INVALID,
        ) from None
    except (json_format.ParseError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidParameter(
            f"The parameters of {name} do not fit its fields: {first[:300]}", code=ErrorCode.INVALID_PARAMETER_VALUE
        ) from None
