"""No gap: concurrent gRPC and REST clients on loopback across 1,000 sparse
updates, 3 dense swaps and a new version directory. Every request succeeds
and every response equals the prediction of exactly one (model version,
dense version, row state) combination, computed in-process: a response
mixing two dense versions, or a torn row, matches none.

The server serves two models from a TF Serving model config file (ours and
TF Serving's half_plus_two), and the file is rewritten in the middle (a
label for half_plus_two, a third model added): a client of half_plus_two
runs throughout, and it too sees no failed request."""

import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import tf_serving_models
from clients import GrpcClient, http, rows
from serving_fixtures import PROBE, predict_in_process, reference, start_server
from monolith_tf.export import export_version

UPDATES = 1000
SWAPS = {250: 1, 500: 2, 850: 3}   # update index -> dense version swapped in
NEW_VERSION_AT = 600               # update index at which version 2 appears
RELOAD_AT = 400                    # update index at which the model config changes
V2_DENSE = 7                       # dense version of the version-2 export
ROW_STATES = {"A": np.full((1, 4), 0.5, np.float32), "B": np.full((1, 4), -0.5, np.float32)}
PROBED_USER = 1                    # PROBE's first user: its row changes
MAX_REQUESTS_PER_CLIENT = 20_000
MAX_SECONDS = 240


def dense_weights(base, version):
    """Dense weights of ``version``: each version predicts differently, and a
    kernel of one with a bias of another predicts like none of them."""
    kernel, bias = base
    return [kernel * (1 + 0.5 * version), bias + 10.0 * version]


def expected_predictions(path, base):
    """{(dense version, row state): prediction} of the export at ``path``."""
    loaded = reference(path)
    expected = {}
    for state in ("original", "A", "B"):
        if state != "original":
            loaded.signatures["upsert"](table=tf.constant("collection/user"),
                                        ids=tf.constant([PROBED_USER], tf.int64),
                                        values=tf.constant(ROW_STATES[state]))
        for dense in (0, 1, 2, 3, V2_DENSE):
            weights = dense_weights(base, dense)
            loaded.signatures["assign_dense"](
                version=tf.constant(dense, tf.int64),
                dense_0=tf.constant(weights[0]), dense_1=tf.constant(weights[1]))
            expected[(dense, state)] = predict_in_process(loaded).ravel()
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batching"])
def test_no_failed_request_and_no_mixed_version_under_updates(model, tmp_path, batching):
    base_weights = [w.copy() for w in model.layers[-1].get_weights()]
    base = str(tmp_path / "models")
    export_version(model, base, version=1)
    staging = str(tmp_path / "staging")
    model.layers[-1].set_weights(dense_weights(base_weights, V2_DENSE))
    try:
        export_version(model, staging, version=2, dense_version=V2_DENSE)
    finally:
        model.layers[-1].set_weights(base_weights)
    expected = {1: expected_predictions(f"{base}/1", base_weights),
                2: expected_predictions(f"{staging}/2", base_weights)}
    combos = [(v, key, value) for v, table in expected.items() for key, value in table.items()]
    # Combinations of one model version that share rows and dense weights predict alike;
    # every other pair must differ, or a mix could pass unseen.
    for i, (v1, k1, p1) in enumerate(combos):
        for v2, k2, p2 in combos[i + 1:]:
            if v1 == v2:
                assert np.abs(p1 - p2).max() > 1e-3, (v1, k1, k2)

    half = tf_serving_models.half_plus_two_tf1(str(tmp_path / "half_plus_two"))
    three = tf_serving_models.half_plus_two_tf1(str(tmp_path / "half_plus_three"), b=3.0)
    config = tmp_path / "models.config"
    config.write_text(model_config(base, half))
    server = start_server(base, enable_batching=batching, batch_timeout_micros=200,
                          model_config_file=str(config), model_config_poll_seconds=0.2)
    assert server.models.names() == ["ctr", "half_plus_two"]
    done = threading.Event()
    failures, unmatched, seen = [], [], []
    lock = threading.Lock()
    deadline = time.monotonic() + MAX_SECONDS

    def observed_dense():
        with lock:
            return dense_seen_of(seen)

    def match(prediction, versions):
        hits = [(v, key) for v in versions for key, value in expected[v].items()
                if np.allclose(prediction, value, rtol=1e-5, atol=1e-5)]
        with lock:
            (seen.extend(hits) if len(hits) >= 1 else unmatched.append(prediction))

    def grpc_client():
        client = GrpcClient(server)
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if done.is_set() or time.monotonic() > deadline:
                break
            try:
                outputs, response = client.predict(PROBE)
                match(outputs["output"].ravel(), [response.model_spec.version.value])
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(error))
        client.close()

    def rest_client():
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if done.is_set() or time.monotonic() > deadline:
                break
            status, reply = http(server, "/v1/models/ctr:predict", {"instances": rows(PROBE)})
            if status != 200:
                failures.append((status, reply))
            else:
                match(np.array(reply["predictions"]).ravel(), [1, 2])

    half_answers = []

    def half_plus_two_client():
        client = GrpcClient(server)
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if done.is_set() or time.monotonic() > deadline:
                break
            try:
                outputs, _ = client.predict({"x": np.array([[2.0]], np.float32)},
                                            model="half_plus_two")
                half_answers.append(float(outputs["y"].ravel()[0]))
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(error))
        client.close()

    clients = [threading.Thread(target=grpc_client) for _ in range(3)] + [
        threading.Thread(target=rest_client) for _ in range(2)] + [
        threading.Thread(target=half_plus_two_client)]
    for client in clients:
        client.start()
    applied, swaps = 0, 0
    try:
        for i in range(UPDATES):
            if i == RELOAD_AT:
                # Written as a deployment should: whole, then renamed over the old one.
                staged = tmp_path / "models.config.tmp"
                staged.write_text(model_config(base, half, three, label=True))
                os.replace(staged, config)
                assert_eventually(lambda: server.models.names() == [
                    "ctr", "half_plus_three", "half_plus_two"], seconds=60)
                assert_eventually(lambda: server.model("half_plus_three").serving_version == 123,
                                  seconds=60)
                assert server.model("half_plus_two").servable(label="stable").version == 123
            if i == NEW_VERSION_AT:
                os.rename(f"{staging}/2", f"{base}/2")
            if i in SWAPS:
                if i > NEW_VERSION_AT:  # this swap must land on version 2
                    assert_eventually(lambda: server.version == 2, seconds=60)
                server.swap_dense(dense_weights(base_weights, SWAPS[i]), SWAPS[i])
                swaps += 1
                # Clients see each swapped-in version before updates go on,
                # however slowly they run (gates on what was observed).
                version = 2 if i > NEW_VERSION_AT else 1
                assert_eventually(lambda: (version, SWAPS[i]) in observed_dense(), seconds=60)
            state = "A" if i % 2 else "B"
            ids = np.array([PROBED_USER, 10_000 + i], np.int64)
            applied += server.apply_rows("collection/user", ids,
                                         np.repeat(ROW_STATES[state], 2, axis=0))
            time.sleep(0.002)
        # A last stretch on the final state: until 200 responses were checked
        # in all and, with batching, some model call served several requests.
        assert_eventually(lambda: len(seen) + len(unmatched) > 200
                          and (not batching or merged_calls(server) > 0), seconds=60)
    finally:
        done.set()
        for client in clients:
            client.join(60)
        final = GrpcClient(server).predict(PROBE)
        metrics = http(server, "/monitoring/prometheus/metrics")[1]
        server.stop()
    print(f"{len(seen) + len(unmatched)} responses checked, {len(failures)} failed; "
          f"(model version, dense version) seen: {sorted(dense_seen_of(seen))}")
    assert failures == [], failures[:5]
    assert len(half_answers) > 10 and set(half_answers) == {3.0}
    if batching:  # some model calls served several requests
        print(f"merged model calls: {merged_calls_in(metrics):.0f}")
        assert merged_calls_in(metrics) > 0
    assert unmatched == [], unmatched[:5]
    assert applied == 2 * UPDATES and swaps == len(SWAPS)
    assert len(seen) > 200
    versions = {v for v, _ in seen}
    dense_seen = dense_seen_of(seen)
    assert versions == {1, 2}
    assert (2, 3) in dense_seen and len(dense_seen) >= 3, dense_seen
    last_state = "A" if (UPDATES - 1) % 2 else "B"
    np.testing.assert_allclose(final[0]["output"].ravel(), expected[2][(3, last_state)],
                               rtol=1e-5, atol=1e-5)


def model_config(base, half, three=None, label=False):
    """A ModelServerConfig: ``ctr`` and half_plus_two, then (reload) a label
    on half_plus_two and half_plus_three added."""
    labels = ' version_labels { key: "stable" value: 123 }' if label else ""
    text = (f'model_config_list {{ config {{ name: "ctr" base_path: "{base}" }} '
            f'config {{ name: "half_plus_two" base_path: "{half}"{labels} }}')
    if three:
        text += f' config {{ name: "half_plus_three" base_path: "{three}" }}'
    return text + " }"


def merged_calls_in(metrics):
    """Model calls that served more than one request, from the exposition."""
    values = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("monolith_serving_batched_requests_")}
    return values["monolith_serving_batched_requests_count"] - \
        values['monolith_serving_batched_requests_bucket{le="1.0"}']


def merged_calls(server):
    return merged_calls_in(http(server, "/monitoring/prometheus/metrics")[1])


def dense_seen_of(seen):
    return {(v, dense) for v, (dense, _) in seen}


def assert_eventually(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
