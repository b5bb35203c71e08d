import sys

from nlsweep.cli import main

sys.exit(main())
