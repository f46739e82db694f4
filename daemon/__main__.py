"""``python -m daemon`` runs the same CLI as the ``tandava`` console script."""

import sys

from daemon.cli import main

sys.exit(main())
