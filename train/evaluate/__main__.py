"""``python -m train.evaluate``: see :mod:`train.evaluate.cli`."""

import sys

from train.evaluate.cli import main

sys.exit(main())
