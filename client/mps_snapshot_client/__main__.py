"""``python -m mps_snapshot_client COMMAND``: the client commands of ``mps-snapshot`` alone."""

import sys

from mps_snapshot_client.cli import main

sys.exit(main())
