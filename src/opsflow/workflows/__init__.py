"""Runbook workflows: one module per runbook, pure and deterministic."""
