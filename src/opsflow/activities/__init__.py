"""Activities: each runbook's side effects, built on ``opsflow.adapters``."""
