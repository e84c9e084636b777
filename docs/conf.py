"""Sphinx configuration for spoc_sockets."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "spoc_sockets"
author = "The spoc_sockets authors"
copyright = "2026, The spoc_sockets authors"
release = "0.1.0"
version = "0.1"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

html_theme = "furo"
html_title = "spoc_sockets"

autodoc_typehints = "description"
autodoc_member_order = "bysource"

nitpicky = False
