"""fedleak's federation side: data, models, the Flower apps and the command line."""

__version__ = "0.1.0"
