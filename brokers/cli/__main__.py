"""``python -m brokers.cli``: how the dev cluster and local bookies start child processes."""

import sys

from brokers.cli import main

sys.exit(main())
