"""``StepTask``: what the training worker runs around its steps.

The worker (``monolith_tf.training``) is the loop; progress reports,
checkpoints, sync pushes and relays are step tasks it calls. A task reads
the worker's state: ``step``, ``examples``, ``last_batch_size``,
``last_step_logs``, ``data_time``, ``max_steps``, ``model``, ``tables`` and
``checkpoint_metadata()``. Subclass it and override what the task needs;
every hook does nothing by default.
"""


class StepTask:
    """A task of the training worker (module doc).

    ``needs_applied_steps``: with steps in flight on a cluster
    (``steps_in_flight`` > 1), later steps may already run when a step is
    counted. A task whose action must see exactly the counted steps (a
    checkpoint) sets this True and defines ``due``: ``after_step`` is then
    called only when no step is in flight, and no new step is issued while
    ``due`` says True.
    """

    needs_applied_steps = False

    def begin(self, worker):
        """A ``train()`` call starts."""

    def after_step(self, worker):
        """A batch was trained; ``worker.step`` counts it."""

    def finish(self, worker):
        """The ``train()`` call ends (data, budget or signal); not after an
        error."""

    def due(self, step):
        """Whether the task's action is due at ``step`` (read only for tasks
        with ``needs_applied_steps``)."""
        return False
