"""`python -m loadtest.fuzz`: see the package's docstring."""

import sys

from loadtest.fuzz.run import main

sys.exit(main())
