"""``python -m monolith_tf <command>``: see ``monolith_tf.cli``."""

import sys

from monolith_tf.cli import main

if __name__ == "__main__":
    sys.exit(main())
