"""Server-side batching: concurrent prediction requests for one signature
merged into one model call (TF Serving's ``--enable_batching``).

A model call has a fixed cost (the Python-to-TF call, kernel launches) that
a batch of 64 examples does not amortize; under concurrent load,
``RequestBatcher`` concatenates the inputs of the requests waiting for a
signature (up to ``max_batch_size`` examples, waiting at most
``batch_timeout_seconds`` after the first one for more), runs the signature
once and splits the outputs by request. Requests are merged only when their
inputs agree in every dimension but the first; a signature whose outputs
are not batch-major (first dimension = examples) is run per request. A
merged call reads one dense slot, so each response still comes from one
dense version.
"""

import collections
import threading
import time

import grpc
import numpy as np

from monolith_tf.serving.errors import ServingError


class _Request:
    __slots__ = ("inputs", "rows", "key", "done", "outputs", "error")

    def __init__(self, inputs, key):
        self.inputs, self.key = inputs, key
        self.rows = next(iter(inputs.values())).shape[0]
        self.done = threading.Event()
        self.outputs = self.error = None


class RequestBatcher:
    """Merges concurrent calls of ``run(inputs) -> outputs`` (numpy dicts).

    Args:
      run: runs the signature on a dict of batch-major numpy inputs.
      max_batch_size: most examples in one merged call.
      batch_timeout_seconds: longest a request waits for others to join
        (0: take whatever is queued when a batch thread is free).
      threads: batch threads, i.e. merged calls running at once.
      on_call: ``on_call(requests, rows)`` after each model call (metrics).
    """

    def __init__(self, run, max_batch_size, batch_timeout_seconds=0.0, threads=2,
                 on_call=None):
        self._run = run
        self._on_call = on_call or (lambda requests, rows: None)
        self.max_batch_size = max_batch_size
        self.timeout = batch_timeout_seconds
        self._pending = collections.deque()
        self._changed = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def __call__(self, inputs):
        """Runs ``inputs`` (possibly merged with other requests); returns its
        outputs. Inputs without a batch dimension run alone."""
        if any(value.ndim == 0 for value in inputs.values()) or len(
                {value.shape[0] for value in inputs.values()}) != 1:
            return self._run(inputs)
        key = tuple(sorted((name, value.shape[1:], value.dtype.str)
                           for name, value in inputs.items()))
        request = _Request(inputs, key)
        with self._changed:
            if self._closed:
                return self._run(inputs)
            self._pending.append(request)
            self._changed.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.outputs

    def close(self):
        """Stops the batch threads after the queued requests ran."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _take_batch(self):
        """The next requests to merge (same key, within max_batch_size)."""
        with self._changed:
            while not self._pending and not self._closed:
                self._changed.wait()
            if not self._pending:
                return []
            first = self._pending.popleft()
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self.timeout
            while True:
                for request in list(self._pending):
                    if request.key == first.key and rows + request.rows <= self.max_batch_size:
                        self._pending.remove(request)
                        batch.append(request)
                        rows += request.rows
                remaining = deadline - time.monotonic()
                if rows >= self.max_batch_size or self._closed or remaining <= 0:
                    return batch
                self._changed.wait(remaining)

    def _loop(self):
        while True:
            batch = self._take_batch()
            if not batch:
                return
            self._run_batch(batch)

    def _run_batch(self, batch):
        try:
            if len(batch) > 1 and self._run_merged(batch):
                self._on_call(len(batch), sum(r.rows for r in batch))
                return
            for request in batch:  # alone, or the merged call failed or did not split
                self._run_alone(request)
        finally:
            for request in batch:
                request.done.set()

    def _run_merged(self, batch):
        """Runs the batch as one call; False if its outputs cannot be split
        or it failed (then each request runs alone, so one bad request does
        not fail the others)."""
        merged = {name: np.concatenate([r.inputs[name] for r in batch])
                  for name in batch[0].inputs}
        try:
            outputs = self._run(merged)
        except Exception:  # noqa: BLE001 - each request is retried alone and gets its error
            return False
        total = sum(r.rows for r in batch)
        if any(value.ndim == 0 or value.shape[0] != total for value in outputs.values()):
            return False
        start = 0
        for request in batch:
            stop = start + request.rows
            request.outputs = {key: value[start:stop] for key, value in outputs.items()}
            start = stop
        return True

    def _run_alone(self, request):
        try:
            request.outputs = self._run(request.inputs)
            self._on_call(1, request.rows)
        except ServingError as error:
            request.error = error
        except Exception as error:  # noqa: BLE001 - the caller waits; it must get an answer
            request.error = ServingError(grpc.StatusCode.INTERNAL,
                                         f"{type(error).__name__}: {error}")
