"""The default names of the log topics of the online loop, declared once.

Every component (replay, joiner, the examples stream, the sync publisher and
followers) and every CLI flag takes these as defaults; pass other names to
run several loops on one log.
"""

FEATURES_TOPIC = "features"            # impressions (replay -> joiner)
ACTIONS_TOPIC = "actions"              # user actions (replay -> joiner)
EXAMPLES_TOPIC = "examples"            # joined examples (joiner -> training worker)
DEAD_LETTER_TOPIC = "dead_letter"      # records the joiner could not read
SYNC_TOPIC = "sync"                    # row and dense pushes (trainer -> replicas)
SYNC_DEAD_LETTER_TOPIC = "sync_dead_letter"  # sync records a replica refused
