"""Parameter sync: how a trained row reaches every serving replica.

``records``   the sync stream's record format (row and dense pushes; no
              TensorFlow needed to read or write it)
``publisher`` ``SyncPublisher``, the training worker's step task that pushes
              changed rows, dense versions and base versions (trainer side)
``follower``  ``SyncFollower``: reads the stream from a base version's
              offsets and applies it, in order, through a sink
``sinks``     the ``SyncSink`` interface, ``ServableSink`` (our server, in
              process) and ``RemoteServingSink`` (any TF Serving, over
              Predict on the export's update signatures: ``sync-agent``)
``relay``     ``ScheduledRelay``: one training run feeding replicas on
              several sync schedules
``replica``   ``Replica``: a model server plus its follower

The trainer side (``publisher``) never imports the server; the replica side
(``follower``, ``sinks``, ``replica``) never imports the Keras layers or the
checkpointers. Import the module you need: this package imports none of
them itself.
"""
