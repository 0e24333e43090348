"""`python -m keras_bsgd.benchmarks.speed ...`: the speed benchmark's command line."""

import sys

from keras_bsgd.benchmarks.speed.cli import main

if __name__ == "__main__":
    sys.exit(main())
