"""``python -m atomicsig`` runs the CLI."""

import sys

from atomicsig.cli import main

sys.exit(main())
