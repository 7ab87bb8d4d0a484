"""Serving the demo's export with TF Serving's APIs, then updating it live.

    python examples/serving_demo.py --model_base_path build/demo/models/ctr

Starts ``python -m monolith_tf serve`` (its own process, loopback only) on a
model base path (``BASE/<version>/`` exports), then, as any TF Serving
client would:
  1. REST: ``POST /v1/models/ctr:predict`` in the row format;
  2. gRPC: ``PredictionService.Predict`` with the official
     ``tensorflow_serving.apis`` stubs, same examples, same scores;
  3. a fresh row for one user through Predict on the ``upsert`` signature
     (what a sync agent sends stock TF Serving), and that user's new score;
then stops the server with SIGTERM.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import grpc
import numpy as np

from monolith_tf.quiet_start import import_tensorflow

tf = import_tensorflow()  # without its start-up lines (set TF_CPP_MIN_LOG_LEVEL to see them)
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

USERS = [1, 13, 405]
MOVIES = [50, 181, 258]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rest_predict(rest_port, users, movies):
    body = {"instances": [{"user_id": int(u), "movie_id": int(m), "timestamp": 0}
                          for u, m in zip(users, movies)]}
    request = urllib.request.Request(f"http://127.0.0.1:{rest_port}/v1/models/ctr:predict",
                                     json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return np.array(json.loads(reply.read())["predictions"]).ravel()


def grpc_predict(stub, signature, inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ctr"
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    response = stub.Predict(request, timeout=30)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_base_path", required=True)
    args = parser.parse_args()
    rest_port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "monolith_tf", "serve", f"--model_base_path={args.model_base_path}",
         "--model_name=ctr", "--port=0", f"--rest_api_port={rest_port}"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        started = json.loads(server.stdout.readline())
        print(f"serving: {started}")
        users, movies = np.array(USERS, np.int64), np.array(MOVIES, np.int64)
        rest = rest_predict(rest_port, users, movies)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(started["grpc"]))
        inputs = {"user_id": users, "movie_id": movies, "timestamp": np.zeros(3, np.int64)}
        over_grpc = grpc_predict(stub, "serving_default", inputs)["output"].ravel()
        for user, movie, a, b in zip(USERS, MOVIES, rest, over_grpc):
            print(f"  user {user:4d} movie {movie:4d}: REST {a:.4f}  gRPC {b:.4f}")
        assert np.allclose(rest, over_grpc, atol=1e-6), (rest, over_grpc)
        row = np.full((1, 16), 0.2, np.float32)
        applied = grpc_predict(stub, "upsert", {
            "table": np.array(b"embeddings/user_id", dtype=object),
            "ids": np.array([USERS[0]], np.int64), "values": row})["rows"]
        after = grpc_predict(stub, "serving_default", inputs)["output"].ravel()
        print(f"upsert of {int(applied)} row for user {USERS[0]} while serving: score "
              f"{over_grpc[0]:.4f} -> {after[0]:.4f} (others unchanged: "
              f"{np.allclose(after[1:], over_grpc[1:], atol=1e-6)})")
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
        print(f"server stopped on SIGTERM: {out.strip().splitlines()[-1] if out.strip() else ''}"
              f" (exit {server.returncode})")


if __name__ == "__main__":
    main()
