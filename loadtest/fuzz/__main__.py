"""`python -m loadtest.fuzz`: see the package's docstring."""

import sys

from loadtest.fuzz.cli import main

sys.exit(main())
