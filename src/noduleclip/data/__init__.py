"""Manifests, datasets and samplers."""

from noduleclip.data.manifest import NoduleManifest, NoduleRecord

__all__ = ["NoduleManifest", "NoduleRecord"]
