"""Sphinx configuration: portio's API reference, built from the docstrings of the installed
package (``pip install -e .`` or tox's ``docs`` environment), never from the source tree, whose
portio/ lacks portio.backends."""

project = "portio"
author = "the portio authors"
copyright = "portio authors, MIT licence"
extensions = ["sphinx.ext.autodoc"]
# The docstrings are reStructuredText; signatures show the type hints, the text says the rest.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["examples", "_build"]
html_theme = "alabaster"
