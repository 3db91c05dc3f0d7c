"""`python -m style_components ...` runs the command line."""

import sys

from .cli import main

sys.exit(main())
