"""Data sources of the training worker: where batches come from and where
the worker is in them.

A source yields its batches in *segments*: ``tf.data`` datasets that each
end (a pass over files, or a stretch of a stream until it goes quiet).
Between segments the worker checks its stops; ``segment_ended`` says whether
another segment follows. The source also keeps the position after the last
trained batch, which the worker saves with each sparse checkpoint
(``position()``, a JSON-able dict) and hands back on resume (``restore``).

Implementations: ``DatasetSource`` (a bounded ``tf.data.Dataset`` read for
some epochs; position = epoch and batches into it, restored by skipping)
and ``monolith_tf.streaming.dataset.ExampleStream`` (the examples log;
position = log offsets carried by each batch, restored by seeking). A
batch may carry its own position as the int64 vector ``POSITION_KEY`` in
its feature dict; the worker removes it before the model sees the batch
and passes it to ``batch_trained``.
"""

from typing import Protocol, runtime_checkable

import tensorflow as tf

#: Feature of a batch holding its source position (removed before training).
POSITION_KEY = "__stream_position"


@runtime_checkable
class DataSource(Protocol):
    """What the training worker reads (module doc)."""

    def begin(self):
        """A train() call starts reading (resets per-call state, e.g. idle clocks)."""

    def next_segment(self):
        """The batches from the current position until this segment ends, as
        a ``tf.data.Dataset``; None when the source has nothing more."""

    def batch_trained(self, batch_position):
        """One batch was trained; ``batch_position`` is what it carried under
        ``POSITION_KEY`` (a list of ints, empty when it carried none)."""

    def segment_ended(self, trained_any):
        """The current segment's batches ran out (``trained_any``: it had at
        least one); returns whether another segment should be read."""

    def position(self):
        """The position after the last trained batch, as a JSON-able dict."""

    def restore(self, position):
        """Continues from a dict that ``position()`` returned (a checkpoint's)."""


class DatasetSource:
    """A bounded ``tf.data.Dataset`` read ``epochs`` times.

    Position: ``epoch`` and ``batch_in_epoch``. A restored position is
    reached by skipping the batches already trained in the current epoch
    (``dataset.skip``, which reads them), so the dataset must yield the same
    batches in the same order when rebuilt (seeded shuffles with
    ``reshuffle_each_iteration=False``, or none).
    """

    def __init__(self, dataset, epochs=1):
        if not isinstance(dataset, tf.data.Dataset):
            raise TypeError(f"dataset must be a tf.data.Dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.epochs = int(epochs)
        self.epoch, self.batch_in_epoch = 0, 0

    def begin(self):
        pass

    def next_segment(self):
        if self.epoch >= self.epochs:
            return None
        return self.dataset.skip(self.batch_in_epoch) if self.batch_in_epoch else self.dataset

    def batch_trained(self, batch_position):
        self.batch_in_epoch += 1

    def segment_ended(self, trained_any):
        self.epoch += 1
        self.batch_in_epoch = 0
        return self.epoch < self.epochs

    def position(self):
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def restore(self, position):
        self.epoch = int(position.get("epoch", 0))
        self.batch_in_epoch = int(position.get("batch_in_epoch", 0))


def as_data_source(data, epochs=1):
    """``data`` as a DataSource: a DataSource as it is, a ``tf.data.Dataset``
    as a DatasetSource of ``epochs`` passes. Raises TypeError otherwise."""
    if isinstance(data, tf.data.Dataset):
        return DatasetSource(data, epochs)
    if isinstance(data, DataSource):
        return data
    raise TypeError("dataset must be a tf.data.Dataset or a DataSource (such as an "
                    f"ExampleStream), got {type(data).__name__}")
