"""Feature extractors. Importing this package registers the built-in ones."""

import importlib

for _module in ("spectral", "opensmile", "ssl", "text", "openl3"):
    try:
        importlib.import_module(f"mer.extract.{_module}")
    except ModuleNotFoundError as exc:  # only while a module is being written; never hides a missing dependency
        if exc.name != f"mer.extract.{_module}":
            raise
