"""``python -m resume`` runs the command line."""

import sys

from resume.cli import main

sys.exit(main())
