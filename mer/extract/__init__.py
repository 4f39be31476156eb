"""Feature extractors. Importing this package registers the built-in ones."""

import importlib

for _module in ("spectral", "opensmile", "ssl", "text", "openl3", "whisper", "emotion2vec", "asr", "finetuned"):
    importlib.import_module(f"mer.extract.{_module}")
