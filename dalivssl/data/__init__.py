"""Datasets: manifests, adapters for public datasets, nested subsets, checking, preparing, synth."""
from dalivssl.data.manifest import Manifest, VideoRecord, load_manifest, save_manifest

__all__ = ["Manifest", "VideoRecord", "load_manifest", "save_manifest"]
