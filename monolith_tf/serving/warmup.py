"""Warm-up replay: TF Serving's ``assets.extra/tf_serving_warmup_requests``.

A SavedModel version may carry up to 1,000 ``tensorflow.serving.PredictionLog``
records (a TFRecord file) of Predict, Classify, Regress or MultiInference
requests. Before the version serves, each is run on it ``iterations`` times
(``--num_request_iterations_for_warmup``; default once), so the first real
requests do not pay for lazy initialization. The model name and version in
the recorded requests are ignored: they run on the version being loaded. A
record that fails, or a record of another kind, fails the load (the version
ends in state END with the error), as in TF Serving.
"""

import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from monolith_tf.serving import inference
from monolith_tf.serving.errors import invalid

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000


class Warmup:
    """Replays a version's warm-up records (module doc); ``iterations``:
    runs per record (0: once); ``check_method_names`` as the server's."""

    def __init__(self, iterations=0, check_method_names=False):
        self.iterations = max(int(iterations), 1)
        self.check_method_names = check_method_names

    @staticmethod
    def has_requests(path):
        """Whether the SavedModel at ``path`` carries warm-up records."""
        return os.path.isfile(os.path.join(path, WARMUP_FILE))

    def replay(self, servable):
        """Runs the records of ``servable``'s directory on it. Returns the
        number of records; raises ServingError (or the reading error) for a
        record that fails."""
        path = os.path.join(servable.path, WARMUP_FILE)
        count = 0
        for record in tf.data.TFRecordDataset(path):
            count += 1
            if count > MAX_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum "
                              f"({MAX_RECORDS}) at {path}")
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(record.numpy())
            for _ in range(self.iterations):
                self._run(servable, log)
        return count

    def _run(self, servable, log):
        kind = log.WhichOneof("log_type")
        check = self.check_method_names
        if kind == "predict_log":
            inference.predict(servable, log.predict_log.request)
        elif kind == "classify_log":
            inference.classify(servable, log.classify_log.request, check)
        elif kind == "regress_log":
            inference.regress(servable, log.regress_log.request, check)
        elif kind == "multi_inference_log":
            inference.multi_inference(lambda spec: servable, log.multi_inference_log.request,
                                      check)
        else:
            raise invalid(f"Unsupported log_type for warmup: {kind}")
