"""Audits of the tools around a quantization experiment; `qcheck.audit.optuna` audits Optuna search spaces (Z10)."""
