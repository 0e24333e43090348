"""`python -m keras_bsgd compare ...`: the `keras-bsgd` command line."""

import sys

from keras_bsgd.cli import main

if __name__ == "__main__":
    sys.exit(main())
