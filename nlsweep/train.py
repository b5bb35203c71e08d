"""`python -m nlsweep.train SPEC`: an alias of `nlsweep train SPEC` (one trial, without Ray)."""

import sys

from nlsweep.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
