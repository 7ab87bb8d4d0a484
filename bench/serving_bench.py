"""Serving throughput and latency: the model server over gRPC and REST
against calling the same signature in-process, and p99 under sparse updates.

A CTR model (user, item and 5 tags embedded at dim 16, MLP 256-128-64-1)
with --users rows in its user table is exported once. Then, each with
--clients concurrent client threads making --requests calls each at batch
1 and 64:
  in-process  the bench process calls the loaded SavedModel's
              ``serving_default`` (the limit for this machine: no RPC),
  gRPC        ``python -m monolith_tf serve`` in its own process, called
              with the official tensorflow_serving.apis stubs,
  REST        the same server, row-format JSON over keep-alive HTTP.
Requests are built once per client; the server decodes and encodes every
call. Last, p99 under updates: gRPC at batch 64 at a fixed --paced-rate (below
saturation: at saturation any extra work shows as queueing), without and
with --update-rate upserts/s of 64 rows each (Predict on the ``upsert``
signature, from another thread; or applied by the server process itself,
as the sync subscriber does), alternated --paced-runs times: on a shared VM
the run-to-run spread of p99 is large, so the median ratio is reported. "Serving CPU ms/call" is
the CPU time of the serving process (or, in-process, of the bench process)
per call: the cost that does not depend on where the clients run.

    PYTHONPATH=. .venv/bin/python bench/serving_bench.py [--clients 4 --requests 400]
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

TAGS = 5


def build_export(base, users, items, seed=0):
    import tensorflow as tf

    from monolith_tf.layers import HashEmbeddingCollection
    from monolith_tf.export import export_version

    keras = tf.keras
    features = {"user": {"dim": 16}, "item": {"dim": 16},
                "tags": {"dim": 16, "combiner": "mean"}}
    inputs = {"user": keras.Input(shape=(), dtype="int64", name="user"),
              "item": keras.Input(shape=(), dtype="int64", name="item"),
              "tags": keras.Input(shape=(TAGS,), dtype="int64", name="tags")}
    embedded = HashEmbeddingCollection(features, name="embeddings")(inputs)
    x = keras.layers.Concatenate()([embedded[k] for k in ("user", "item", "tags")])
    for width in (256, 128, 64):
        x = keras.layers.Dense(width, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(seed)
    n = max(users, items)
    data = {"user": rng.permutation(n) % users, "item": rng.integers(0, items, n),
            "tags": rng.integers(0, 1000, (n, TAGS))}
    model.fit(data, rng.integers(0, 2, (n, 1)), batch_size=1024, epochs=1, verbose=0)
    export_version(model, base, version=1)


def make_batch(batch, users, items, seed):
    rng = np.random.default_rng(seed)
    return {"user": rng.integers(0, users, batch).astype(np.int64),
            "item": rng.integers(0, items, batch).astype(np.int64),
            "tags": rng.integers(0, 1000, (batch, TAGS)).astype(np.int64)}


def run_clients(clients, requests, make_call, serving_process=None):
    """Runs ``clients`` threads, each calling ``make_call(i)()`` ``requests``
    times; returns (calls per second, latencies in seconds, CPU seconds per
    call of ``serving_process``: the server's pid, or None for this one)."""
    import psutil

    serving = psutil.Process(serving_process)
    callers = [make_call(i) for i in range(clients)]
    for call in callers:  # warm-up, not timed
        for _ in range(3):
            call()
    latencies = [[] for _ in range(clients)]

    def worker(i):
        call, own = callers[i], latencies[i]
        for _ in range(requests):
            started = time.perf_counter()
            call()
            own.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    cpu_before = sum(serving.cpu_times()[:2])
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = sum(serving.cpu_times()[:2]) - cpu_before
    flat = np.concatenate([np.array(own) for own in latencies])
    return clients * requests / wall, flat, cpu / (clients * requests)


def summary(qps, latencies, cpu_per_call):
    return {"qps": qps, "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            "cpu_ms_per_call": cpu_per_call * 1e3}


def in_process(base, batch, args):
    import tensorflow as tf

    serve = tf.saved_model.load(f"{base}/1").signatures["serving_default"]

    def make_call(i):
        tensors = {k: tf.constant(v) for k, v in
                   make_batch(batch, args.users, args.items, i).items()}
        return lambda: serve(**tensors)["output"].numpy()

    return summary(*run_clients(args.clients, args.requests, make_call))


def grpc_client(server, batch, args, seed):
    """(stub, a Predict request of ``batch`` examples) for one client thread."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ctr"
    for name, value in make_batch(batch, args.users, args.items, seed).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return stub, request


def grpc_calls(server, batch, args):
    def make_call(i):
        stub, request = grpc_client(server, batch, args, i)

        def call():
            response = stub.Predict(request, timeout=60)
            assert response.outputs["output"].tensor_shape.dim[0].size == batch
        return call

    return summary(*run_clients(args.clients, args.requests, make_call, server.pid))


def paced_grpc_calls(server, batch, args):
    """gRPC calls at a fixed total rate (--paced-rate calls/s over --clients
    threads, for --paced-seconds): latency with the server below saturation,
    where extra work shows as interference rather than as queueing."""
    period = args.clients / args.paced_rate
    calls = int(args.paced_seconds / period)
    latencies = [[] for _ in range(args.clients)]

    def worker(i):
        stub, request = grpc_client(server, batch, args, i)
        stub.Predict(request, timeout=60)
        start = time.perf_counter() + i * period / args.clients
        for k in range(calls):
            delay = start + k * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            stub.Predict(request, timeout=60)
            latencies[i].append(time.perf_counter() - sent)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = np.concatenate([np.array(own) for own in latencies])
    return {"calls": len(flat), "p50_ms": float(np.percentile(flat, 50) * 1e3),
            "p99_ms": float(np.percentile(flat, 99) * 1e3)}


def rest_calls(server, batch, args):
    def make_call(i):
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        inputs = make_batch(batch, args.users, args.items, i)
        body = json.dumps({"instances": [{k: v[j].tolist() for k, v in inputs.items()}
                                         for j in range(batch)]}).encode()

        def call():
            connection.request("POST", "/v1/models/ctr:predict", body,
                               {"Content-Type": "application/json"})
            reply = connection.getresponse()
            payload = reply.read()
            assert reply.status == 200, payload[:200]
        return call

    return summary(*run_clients(args.clients, args.requests, make_call, server.pid))


class Updater:
    """Sends ``rate`` upserts per second of 64 rows each over gRPC."""

    def __init__(self, port, rate, users):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{port}"))
        rng = np.random.default_rng(7)
        self._requests = []
        for _ in range(50):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "ctr"
            request.model_spec.signature_name = "upsert"
            request.inputs["table"].CopyFrom(tf.make_tensor_proto("embeddings/user"))
            request.inputs["ids"].CopyFrom(tf.make_tensor_proto(
                rng.integers(0, users, 64).astype(np.int64)))
            request.inputs["values"].CopyFrom(tf.make_tensor_proto(
                rng.normal(0, 0.1, (64, 16)).astype(np.float32)))
            self._requests.append(request)
        self.rate, self.sent = rate, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        started = time.perf_counter()
        while not self._stop.is_set():
            self._stub.Predict(self._requests[self.sent % len(self._requests)], timeout=60)
            self.sent += 1
            delay = started + self.sent / self.rate - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)

    def __enter__(self):
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.achieved = self.sent / (time.perf_counter() - self._started)


def serve_with_updates(base, rate, users):
    """Worker mode: a ModelServer that applies ``rate`` upserts/s of 64 rows
    in-process (as the sync subscriber will), until SIGTERM."""
    import signal

    from monolith_tf.serving.server import ModelServer

    server = ModelServer(base, model_name="ctr", port=0, rest_api_port=None).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rng = np.random.default_rng(7)
    pushes = [(rng.integers(0, users, 64).astype(np.int64),
               rng.normal(0, 0.1, (64, 16)).astype(np.float32)) for _ in range(50)]
    print(json.dumps({"grpc": f"127.0.0.1:{server.grpc_port}"}), flush=True)
    started, sent = time.perf_counter(), 0
    while not stop.is_set():
        if rate:
            ids, rows = pushes[sent % len(pushes)]
            server.apply_rows("embeddings/user", ids, rows)
            sent += 1
            stop.wait(max(0.0, started + sent / rate - time.perf_counter()))
        else:
            stop.wait(1.0)
    server.stop()


class Server:
    """``python -m monolith_tf serve`` in its own process (or, with
    ``updates_per_s``, ``serve_with_updates``)."""

    def __init__(self, base, *flags, updates_per_s=None, users=0):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.rest_port = probe.getsockname()[1]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, "-m", "monolith_tf", "serve", f"--model_base_path={base}",
                   "--model_name=ctr", "--port=0", f"--rest_api_port={self.rest_port}", *flags]
        if updates_per_s is not None:
            command = [sys.executable, os.path.abspath(__file__), "--serve-with-updates", base,
                       "--update-rate", str(updates_per_s), "--users", str(users)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        started = json.loads(self.process.stdout.readline())
        self.grpc_port = int(started["grpc"].rsplit(":", 1)[1])
        self.pid = self.process.pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(60)


def cpu_ratio(row, baseline):
    """CPU per call against the baseline's (CPU clocks tick every 10 ms: a
    tiny run may measure none)."""
    if not baseline["cpu_ms_per_call"]:
        return "-"
    return f"{row['cpu_ms_per_call'] / baseline['cpu_ms_per_call']:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="calls per client")
    parser.add_argument("--update-rate", type=float, default=100.0, help="upserts per second")
    parser.add_argument("--paced-rate", type=float, default=300.0,
                        help="calls/s of the p99-under-updates runs (below saturation)")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--paced-runs", type=int, default=5,
                        help="alternations of the p99 runs without and with updates")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve-with-updates", metavar="BASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_with_updates:
        return serve_with_updates(args.serve_with_updates, args.update_rate, args.users)
    base = tempfile.mkdtemp(prefix="serving_bench_")
    results = {}
    try:
        build_export(base, args.users, args.items)
        for batch in (1, 64):
            results[f"in-process b{batch}"] = in_process(base, batch, args)
        with Server(base) as server:
            for batch in (1, 64):
                results[f"gRPC b{batch}"] = grpc_calls(server, batch, args)
                results[f"REST b{batch}"] = rest_calls(server, batch, args)
            for run in range(args.paced_runs):  # alternated: the spread is the noise
                results[f"paced, no updates {run}"] = paced_grpc_calls(server, 64, args)
                with Updater(server.grpc_port, args.update_rate, args.users) as updater:
                    results[f"paced, updates {run}"] = paced_grpc_calls(server, 64, args)
                results[f"paced, updates {run}"]["updates_per_s"] = updater.achieved
        for run in range(args.paced_runs):  # updates applied inside the server (sync's path)
            for rate, name in ((0, "quiet server"), (args.update_rate, "in-process updates")):
                with Server(base, updates_per_s=rate, users=args.users) as server:
                    results[f"paced, {name} {run}"] = paced_grpc_calls(server, 64, args)
        with Server(base, "--enable_batching") as server:
            for batch in (1, 64):
                results[f"gRPC batching b{batch}"] = grpc_calls(server, batch, args)
                results[f"REST batching b{batch}"] = rest_calls(server, batch, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{args.clients} client threads x {args.requests} calls, {os.cpu_count()} CPUs\n")
    print("| path | batch | calls/s | examples/s | p50 ms | p99 ms | calls/s vs in-process "
          "| serving CPU ms/call | CPU/call vs in-process |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (1, 64):
        base_row = results[f"in-process b{batch}"]
        for path in ("in-process", "gRPC", "REST", "gRPC batching", "REST batching"):
            r = results[f"{path} b{batch}"]
            print(f"| {path} | {batch} | {r['qps']:,.0f} | {r['qps'] * batch:,.0f} | "
                  f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps'] / base_row['qps']:.2f}x | "
                  f"{r['cpu_ms_per_call']:.2f} | {cpu_ratio(r, base_row)} |")
    print(f"\ngRPC batch 64 at {args.paced_rate:.0f} calls/s, p50 / p99 ms, without and with "
          f"{args.update_rate:.0f} upserts/s of 64 rows (Predict on `upsert`):\n")
    print("| updates sent | p99 ms, no updates | p99 ms, with updates | p99 ratio: median "
          "(range) |")
    print("|---|---|---|---|")
    for label, quiet_key, busy_key in (
            (f"over gRPC, {args.update_rate:.0f}/s", "paced, no updates", "paced, updates"),
            (f"in the server, {args.update_rate:.0f}/s", "paced, quiet server",
             "paced, in-process updates")):
        quiet = [results[f"{quiet_key} {run}"]["p99_ms"] for run in range(args.paced_runs)]
        busy = [results[f"{busy_key} {run}"]["p99_ms"] for run in range(args.paced_runs)]
        ratios = [b / q for q, b in zip(quiet, busy)]
        print(f"| {label} | {' '.join(f'{q:.2f}' for q in quiet)} | "
              f"{' '.join(f'{b:.2f}' for b in busy)} | {np.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
