"""Dense checkpoints: a Keras model's weights and optimizer state, without
its hash tables (those go to sparse checkpoints, on their own schedule).

``tf.train.Checkpoint(model=model)`` would also write every table in full
(HashTable is a checkpointable resource), so this one checkpoints the
variables as two ordered lists instead: the model's weights and the
optimizer's variables. Order is the model's construction order, so a model
built by the same code restores it; a model whose variables differ in
number or shape gets a clear error. Files are TensorFlow's own checkpoint
format, written by ``tf.train.CheckpointManager`` (temporary files, then
rename) and pruned to ``keep`` checkpoints.
"""

import os
import shutil

import tensorflow as tf

from monolith_tf.sparse_checkpoint import CheckpointSaveError, write_error_parts


def as_tf_variable(variable):
    """The ``tf.Variable`` behind a Keras variable (Keras 3 wraps it; tf_keras
    variables are ``tf.Variable`` already)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


class DenseCheckpointError(ValueError):
    """A dense checkpoint is missing, unreadable or does not fit the model."""


class DenseCheckpointer:
    """Saves and restores ``model.weights`` and ``model.optimizer.variables``.

    Args:
      directory: where checkpoints go (``dense-<step>.*`` and TF's
        ``checkpoint`` index file).
      model: a compiled Keras model whose variables exist (built).
      keep: checkpoints to keep; older ones are deleted.

    Besides the variables each checkpoint holds ``step`` (the worker's
    global step) and ``sparse_sequence``: the sequence number of the sparse
    checkpoint written at the same step (0: none), which pairs them on
    resume.
    """

    def __init__(self, directory, model, keep=3):
        self.directory = directory
        self.model = model
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.sparse_sequence = tf.Variable(0, dtype=tf.int64, trainable=False,
                                           name="sparse_sequence")
        self._keep = int(keep)
        self._manager = None

    def _checkpoint(self):
        optimizer = getattr(self.model, "optimizer", None)
        optimizer_variables = list(optimizer.variables) if optimizer is not None else []
        return tf.train.Checkpoint(
            step=self.step, sparse_sequence=self.sparse_sequence,
            model_weights=[as_tf_variable(v) for v in self.model.weights],
            optimizer_variables=[as_tf_variable(v) for v in optimizer_variables])

    def _ensure_manager(self):
        # Built lazily: the optimizer creates its variables on the first step.
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self._checkpoint(), self.directory, max_to_keep=self._keep,
                checkpoint_name="dense")
        return self._manager

    def remove_temporaries(self):
        """Removes the ``dense-<step>_temp`` directories TensorFlow's saver
        leaves when a save is interrupted (it writes there, then renames);
        returns how many. One writer per directory."""
        if not os.path.isdir(self.directory):
            return 0
        leftovers = [name for name in os.listdir(self.directory)
                     if name.startswith("dense-") and "_temp" in name]
        for name in leftovers:
            path = os.path.join(self.directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
        return len(leftovers)

    def save(self, step, sparse_sequence=0):
        """Writes a checkpoint for global ``step``; returns its path prefix."""
        self.remove_temporaries()
        self.step.assign(step)
        self.sparse_sequence.assign(sparse_sequence)
        try:
            return self._ensure_manager().save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            # TensorFlow wrote into dense-<step>_temp; nothing of it is kept.
            self.remove_temporaries()
            code, message = write_error_parts(error)
            raise CheckpointSaveError(
                code, f"dense checkpoint {os.path.join(self.directory, f'dense-{step}')} not saved "
                f"({message}); nothing of it was kept and the previous checkpoints "
                f"are intact") from error

    def checkpoints(self):
        """Path prefixes of the complete checkpoints, oldest first."""
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None:
            return []
        return [p for p in state.all_model_checkpoint_paths
                if tf.io.gfile.exists(p + ".index")]

    def peek(self, path):
        """(step, sparse_sequence) stored in checkpoint ``path``, read without
        touching the model."""
        try:
            reader = tf.train.load_checkpoint(path)
            return (int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")),
                    int(reader.get_tensor("sparse_sequence/.ATTRIBUTES/VARIABLE_VALUE")))
        except (tf.errors.OpError, ValueError, IndexError) as error:
            raise DenseCheckpointError(f"{path}: unreadable dense checkpoint: {error}") from error

    def restore(self, path):
        """Restores checkpoint ``path`` into the model and its optimizer;
        returns (step, sparse_sequence). Raises DenseCheckpointError naming
        the checkpoint when it cannot be read or does not fit the model."""
        if not tf.io.gfile.exists(path + ".index"):
            raise DenseCheckpointError(f"{path}: no such dense checkpoint")
        checkpoint = self._ensure_manager().checkpoint
        try:
            expected = {name: shape for name, shape in tf.train.list_variables(path)}
        except (tf.errors.OpError, ValueError) as error:
            raise DenseCheckpointError(f"{path}: unreadable dense checkpoint: "
                                       f"{getattr(error, 'message', error)}") from error
        count = sum(1 for name in expected if name.startswith("model_weights/"))
        if count != len(self.model.weights):
            raise DenseCheckpointError(
                f"{path}: holds {count} model weights, the model has "
                f"{len(self.model.weights)} (a different model?)")
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise DenseCheckpointError(f"{path}: does not fit the model: {error}") from error
        except IndexError as error:  # TF's reader on a truncated data file
            raise DenseCheckpointError(f"{path}: unreadable dense checkpoint: {error}") from error
        return int(self.step.numpy()), int(self.sparse_sequence.numpy())
