"""Analyses of finished runs. Retrieval, robustness and CKA now compute in engine/ and run as
runs/ specs; distillation follows (issue 23)."""
