"""The tests import the installed portio, never the checkout's source tree.

``python -m pytest`` puts the current directory first on ``sys.path``; from the repository root
that is the source tree's ``portio/``, which has no ``portio.backends`` (setuptools maps
``backends/`` in only when it installs) and would shadow the installed package.  pytest's
``importlib`` import mode (pyproject.toml) adds nothing to ``sys.path``, so dropping the root here
leaves the installed portio (editable, wheel or sdist) as the only one the tests can import.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
