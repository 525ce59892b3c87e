"""gateway: a self-hosted AI edge gateway. Importing the package has no side effects."""

__version__ = "0.1.0"
