"""`python run_sweep.py SPEC [options]` is `nlsweep run SPEC [options]`."""

import sys

from nlsweep.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
