"""``Replica``: a serving replica that follows the sync stream, one object
for the CLI (``serve --sync``), the experiments and the tests.

A ``ModelServer`` on a model base path (the base versions the sync
publisher exports) plus, with a log, a ``SyncFollower`` applying the sync
stream to it in place through a ``ServableSink``.
"""

import time

from monolith_tf.serving.server import ModelServer
from monolith_tf.sync.follower import SyncFollower
from monolith_tf.sync.sinks import ServableSink
from monolith_tf.topics import SYNC_DEAD_LETTER_TOPIC, SYNC_TOPIC


class Replica:
    """Serves ``model_base_path`` and, with ``log``, follows ``topic`` of it.

    Args:
      model_base_path: the servers' model base path.
      log: a ``monolith_tf.streaming`` log holding the sync topic, or None
        for a replica that only serves its base versions (never synced).
      topic / dead_letter_topic: the sync topic and where refused records go.
      synced_model: which of the server's models the stream updates (one of
        a ``model_config_file``'s; default: the server's default model).
      server_options: ``ModelServer`` arguments (``model_name``, ``host``,
        ``port``, ``rest_api_port``, ``poll_seconds``, ``config``, ...).
    """

    def __init__(self, model_base_path, log=None, topic=SYNC_TOPIC,
                 dead_letter_topic=SYNC_DEAD_LETTER_TOPIC, synced_model=None,
                 **server_options):
        self.log, self.topic = log, topic
        self.server = ModelServer(model_base_path, **server_options)
        self._model_name = synced_model or self.server.model_name
        self.follower = None if log is None else SyncFollower(
            log, ServableSink(self.server, synced_model), topic=topic,
            dead_letter_topic=dead_letter_topic)
        self._synced_to = None

    def start(self):
        """Starts the server, then the follower; returns self."""
        self.server.start()
        if self.follower is not None:
            self.follower.start()
        return self

    def stop(self):
        """Stops the follower, then the server (gracefully)."""
        if self.follower is not None:
            self.follower.stop()
        self.server.stop()

    @property
    def model_name(self):
        """The model the sync stream updates (and ``score`` asks)."""
        return self._model_name

    def wait_for_version(self, timeout=120.0):
        """Waits until a version serves; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while self.server.model(self.model_name).serving_version is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no model version loaded within {timeout} s")
            time.sleep(0.02)

    def catch_up(self, timeout=120.0):
        """Waits until every sync record written so far has been applied
        (or refused); raises TimeoutError otherwise."""
        if self.follower is None:
            return
        end = self.log.end_offsets(self.topic)
        if end == self._synced_to:
            return
        if not self.follower.wait_until_applied(end, timeout):
            raise TimeoutError(f"replica did not apply the sync stream up to {end} "
                               f"within {timeout} s")
        self._synced_to = end

    @property
    def data_time(self):
        """Data time of the newest sync record applied (None before any)."""
        if self.follower is None or self.follower.last_applied is None:
            return None
        return self.follower.last_applied[3]

    def score(self, features, output="output"):
        """The served ``output`` of a batch (``{input: numpy array}``; inputs
        the model does not take are left out), flattened."""
        servable = self.server.servable(self.model_name)
        inputs = {name: features[name] for name in servable.input_specs(None)}
        return servable.predict(None, inputs)[output].ravel()
