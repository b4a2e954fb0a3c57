"""``python -m portio.bench``: see :mod:`portio.bench.cli`."""

import sys

from portio.bench.cli import main

sys.exit(main())
