"""mer: multimodal (speech + text) emotion recognition toolkit."""

__version__ = "0.1.0"
