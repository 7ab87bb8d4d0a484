"""``python -m monolith_tf serve``: TF Serving's flags, loopback by default,
answers both APIs, stops cleanly on SIGTERM."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from clients import GrpcClient, free_port, http, rows
from serving_fixtures import PROBE, predict_in_process, reference


class _Ports:
    def __init__(self, grpc_port, rest_port):
        self.grpc_port, self.rest_port = grpc_port, rest_port


@pytest.mark.slow
def test_serve_command_answers_and_stops_on_sigterm(base_path, tmp_path):
    rest_port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        [sys.executable, "-m", "monolith_tf", "serve", f"--model_base_path={base_path}",
         "--model_name=ctr", "--port=0", f"--rest_api_port={rest_port}", "--max_seconds=120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    try:
        line = process.stdout.readline()
        assert line, process.stderr.read()[-3000:]
        started = json.loads(line)
        assert started["version"] == 1
        host, grpc_port = started["grpc"].rsplit(":", 1)
        assert host == "127.0.0.1"
        assert started["rest"] == f"http://127.0.0.1:{rest_port}"
        ports = _Ports(int(grpc_port), rest_port)
        status, reply = http(ports, "/v1/models/ctr:predict", {"instances": rows(PROBE)})
        assert status == 200 and len(reply["predictions"]) == 3
        client = GrpcClient(ports)
        outputs, _ = client.predict(PROBE)
        client.close()
        # Both APIs answer what the export predicts when called in this process.
        want = predict_in_process(reference(os.path.join(base_path, "1"))).ravel()
        np.testing.assert_allclose(outputs["output"].ravel(), want, rtol=1e-6)
        np.testing.assert_allclose(np.array(reply["predictions"]).ravel(), want, rtol=1e-6)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"stopped": "ctr"}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
