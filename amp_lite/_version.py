__version__ = "0.1.0"
LIBRARY = f"amp-lite/{__version__}"
