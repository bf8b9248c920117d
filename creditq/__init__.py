"""creditq: a credit-metered gateway for slow AI generation jobs. The console script is :mod:`creditq.cli`."""

__version__ = "0.1.0"
