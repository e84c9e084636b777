"""Example applications (importable as ``examples.<name>`` from the repository root)."""
