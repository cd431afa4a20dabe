"""imgproxy: an asynchronous on-demand image proxy."""

__version__ = "0.1.0"
