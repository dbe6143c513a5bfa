"""`python -m modelgate` is the `modelgate` command."""

import sys

from modelgate.gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
