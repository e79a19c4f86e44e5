"""DALI video pipelines for pretext-task clip sampling (depends on numpy; DALI only inside
video.py / augment.py / noise.py / loader.py, imported lazily)."""
