"""``python -m portio.echo``: the same as the ``portio-echo`` command."""

import sys

from portio.echo.cli import main

sys.exit(main())
