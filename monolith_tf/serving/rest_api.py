"""TF Serving's REST API on aiohttp.

Routes (TF Serving's, matched case-insensitively with its patterns):
``POST /v1/models/NAME[/versions/V|/labels/L]:predict`` (classify and regress
answer 501), ``GET /v1/models/NAME[/versions/V]`` (status) and ``GET
/v1/models/NAME[/versions/V]/metadata``, plus the Prometheus metrics at
``/monitoring/prometheus/metrics``. Errors are ``{"error": message}`` with
TF Serving's HTTP status for the code; a body over the size limit gets 413.
Parsing, the model call and encoding run on a thread pool, off the event
loop.
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

from monolith_tf.serving import json_format
from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.serving.grpc_api import model_status_response, signature_def_map
from monolith_tf.serving.metrics import METRICS_PATH

_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                           r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|"
                          r"(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)


def _json_reply(document, status=200):
    return web.Response(body=json.dumps(document).encode("utf-8"), status=status,
                        content_type="application/json")


def _error_reply(error):
    return _json_reply({"error": error.message}, error.http_status)


class RestApi:
    """The REST front end of a model server.

    Args:
      manager: the ``ModelManager`` of the served model.
      metrics: the server's ``ServingMetrics``.
      max_request_bytes: largest request body accepted (413 beyond).
      threads: worker threads for parsing and model calls.
    """

    def __init__(self, manager, metrics, max_request_bytes, threads):
        self.manager, self.metrics = manager, metrics
        self.max_request_bytes = max_request_bytes
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
            if request.method == "POST" and (match := _PREDICT_PATH.fullmatch(request.path)):
                name, version, label, verb = match.groups()
                method = verb.lower()
                if method != "predict":
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                       f"{method} is not served here; use predict")
                body = await request.read()
                reply = await self._run(self._predict, name, version, label, body)
            elif request.method == "GET" and (match := _STATUS_PATH.fullmatch(request.path)):
                name, version, label, subresource = match.groups()
                if not name:
                    raise invalid("Missing model name in request.")
                method = "metadata" if subresource else "status"
                handler = self._metadata if subresource else self._status
                reply = await self._run(handler, name, version, label)
            else:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Malformed request: {request.method} {request.path}")
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
        self.metrics.request("rest", method, code.name, time.perf_counter() - started)
        return response

    async def _run(self, handler, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, handler, *args)

    def _predict(self, name, version, label, body):
        servable = self.manager.servable(name, _version(version), label)
        signature, inputs, row_format = json_format.parse_predict_request(
            body, servable.input_specs)
        outputs = servable.predict(signature, inputs)
        return json.dumps(json_format.predict_response(outputs, row_format)).encode("utf-8")

    def _status(self, name, version, label):
        response = model_status_response(self.manager.statuses(name, _version(version), label))
        return json.dumps(_proto_dict(response), indent=1).encode("utf-8")

    def _metadata(self, name, version, label):
        servable = self.manager.servable(name, _version(version), label)
        spec = model_pb2.ModelSpec(name=name)
        spec.version.value = servable.version
        document = {"model_spec": _proto_dict(spec),
                    "metadata": {"signature_def": _proto_dict(signature_def_map(servable))}}
        return json.dumps(document, indent=1).encode("utf-8")


def _version(text):
    return int(text) if text else None


def _proto_dict(message):
    return protobuf_json.MessageToDict(message, preserving_proto_field_name=True,
                                       always_print_fields_with_no_presence=True)


