"""`python -m modelgate` is the `modelgate` command."""

import sys

from modelgate.gateway.cli import main

sys.exit(main())
