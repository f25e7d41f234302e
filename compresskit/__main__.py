"""``python -m compresskit`` runs the CLI."""

import sys

from compresskit.cli import main

sys.exit(main())
