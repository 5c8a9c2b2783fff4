"""opsflow: durable workflows for operations runbooks, built on Temporal."""

__version__ = "0.1.0"
