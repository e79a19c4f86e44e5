"""dalivssl: contextual self-supervised video representation learning on NVIDIA DALI.

Implements the benchmark of Kumar et al., "A Large-Scale Analysis on Contextual Self-Supervised
Video Representation Learning" (arXiv 2306.06010). Heavy dependencies (torch, DALI, CuPy) are
imported lazily by the modules that need them.
"""
__version__ = "0.1.0"
