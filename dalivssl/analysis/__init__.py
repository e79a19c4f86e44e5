"""Analyses on pretrained checkpoints: downstream eval, retrieval, robustness, CKA, distillation."""
