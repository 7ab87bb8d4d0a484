"""TF Serving's REST API on aiohttp.

Every path under ``/v1/`` goes to one handler, as in TF Serving, matched
case-insensitively with its patterns: ``POST
/v1/models/NAME[/versions/V|/labels/L]:predict|:classify|:regress``, ``GET
/v1/models/NAME[/versions/V|/labels/L]`` (status) and ``GET .../metadata``;
any other ``/v1/`` path is 400 "Malformed request"; ``OPTIONS`` is a CORS
preflight (CORS headers on every reply with ``cors``). The Prometheus metrics
are at ``/monitoring/prometheus/metrics``; other paths are 404. Errors are
``{"error": message}`` with TF Serving's HTTP status for the code; a body
over the size limit gets 413, a call over ``timeout_seconds`` 504
(DEADLINE_EXCEEDED). Parsing, the model call and encoding run on a thread
pool, off the event loop.
"""

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiohttp import web
from google.protobuf import json_format as protobuf_json
from tensorflow_serving.apis import model_pb2

from monolith_tf.serving import inference, json_format
from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.serving.grpc_api import model_status_response, signature_def_map
from monolith_tf.serving.metrics import METRICS_PATH

_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                           r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|"
                          r"(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
_INT64_MAX = (1 << 63) - 1
_CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
                 "Access-Control-Allow-Headers": "Content-Type"}


def _json_reply(document, status=200):
    return web.Response(body=json.dumps(document).encode("utf-8"), status=status,
                        content_type="application/json")


def _error_reply(error):
    return _json_reply({"error": error.message}, error.http_status)


class RestApi:
    """The REST front end of a model server.

    Args:
      server: the ``ModelServer`` (its models).
      metrics: the server's ``ServingMetrics``.
      max_request_bytes: largest request body accepted (413 beyond).
      threads: worker threads for parsing and model calls.
      timeout_seconds: longest a call may take (0: no limit), TF Serving's
        ``--rest_api_timeout_in_ms``.
      cors: add TF Serving's CORS headers to every reply
        (``--rest_api_enable_cors_support``).
      check_method_names: classify and regress check signature method names.
    """

    def __init__(self, server, metrics, max_request_bytes, threads, timeout_seconds=0,
                 cors=False, check_method_names=False):
        self.models, self.metrics = server.models, metrics
        self.max_request_bytes = max_request_bytes
        self.timeout_seconds = timeout_seconds or None
        self.cors, self.check_method_names = cors, check_method_names
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rest")

    def application(self):
        """The aiohttp application."""
        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_route("GET", METRICS_PATH, self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    def close(self):
        """Stops the worker threads (after their running requests)."""
        self._pool.shutdown(wait=True)

    async def _metrics(self, request):
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": self.metrics.content_type})

    async def _dispatch(self, request):
        started = time.perf_counter()
        method = "unknown"
        try:
            path = request.path
            if not _API_PATH.fullmatch(path):
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Malformed request: {request.method} {path}")
            malformed = invalid(f"Malformed request: {request.method} {path}")
            if request.method == "OPTIONS":  # a CORS preflight, answered as TF Serving does
                if not re.search(r"https?://", request.headers.get("Origin", "")):
                    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                       "Origin header is missing in CORS preflight")
                reply = b""
            elif request.method == "POST":
                match = _PREDICT_PATH.fullmatch(path)
                if not match:
                    raise malformed
                name, version, label, verb = match.groups()
                method = verb.lower()
                handler = {"predict": self._predict, "classify": self._classify,
                           "regress": self._regress}[method]
                body = await request.read()
                reply = await self._run(handler, name, _version(version), label, body)
            elif request.method == "GET":
                match = _STATUS_PATH.fullmatch(path)
                if not match:
                    raise malformed
                name, version, label, subresource = match.groups()
                method = "metadata" if subresource else "status"
                if not name:
                    raise invalid("Missing model name in request.")
                handler = self._metadata if subresource else self._status
                reply = await self._run(handler, name, _version(version), label)
            else:
                raise malformed
            code = grpc.StatusCode.OK
            response = web.Response(body=reply, content_type="application/json")
        except web.HTTPRequestEntityTooLarge:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            response = _json_reply({"error": f"request body exceeds the server's limit of "
                                             f"{self.max_request_bytes} bytes "
                                             "(--max_request_bytes)"}, 413)
        except ServingError as error:
            code = error.code
            response = _error_reply(error)
        if self.cors:
            response.headers.update(_CORS_HEADERS)
        self.metrics.request("rest", method, code.name, time.perf_counter() - started)
        return response

    async def _run(self, handler, *args):
        call = asyncio.get_running_loop().run_in_executor(self._pool, handler, *args)
        try:
            return await asyncio.wait_for(call, self.timeout_seconds)
        except asyncio.TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"Deadline exceeded: the call took over "
                               f"{self.timeout_seconds * 1e3:.0f} ms "
                               "(--rest_api_timeout_in_ms)") from None

    def _predict(self, name, version, label, body):
        servable = self.models.servable(name, version, label)
        signature, inputs, row_format = json_format.parse_predict_request(
            body, servable.input_specs)
        outputs = servable.predict(signature, inputs)
        return json.dumps(json_format.predict_response(outputs, row_format)).encode("utf-8")

    def _classify(self, name, version, label, body):
        return self._on_examples("classify", inference.classification_result,
                                 json_format.classification_json, name, version, label, body)

    def _regress(self, name, version, label, body):
        return self._on_examples("regress", inference.regression_result,
                                 json_format.regression_json, name, version, label, body)

    def _on_examples(self, method, result_of, to_json, name, version, label, body):
        """A classify or regress call: tf.Examples from the JSON body, the
        result as TF Serving's JSON."""
        signature, examples = json_format.parse_examples_request(body, method)
        servable = self.models.servable(name, version, label)
        result, _ = result_of(servable, signature, examples, self.check_method_names)
        return json.dumps(to_json(result)).encode("utf-8")

    def _status(self, name, version, label):
        response = model_status_response(self.models.statuses(name, version, label))
        return json.dumps(_proto_dict(response), indent=1).encode("utf-8")

    def _metadata(self, name, version, label):
        servable = self.models.servable(name, version, label)
        spec = model_pb2.ModelSpec(name=name)
        spec.version.value = servable.version
        document = {"model_spec": _proto_dict(spec),
                    "metadata": {"signature_def": _proto_dict(signature_def_map(servable))}}
        return json.dumps(document, indent=1).encode("utf-8")


def _version(text):
    if not text:
        return None
    if int(text) > _INT64_MAX:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return int(text)


def _proto_dict(message):
    return protobuf_json.MessageToDict(message, preserving_proto_field_name=True,
                                       always_print_fields_with_no_presence=True)


