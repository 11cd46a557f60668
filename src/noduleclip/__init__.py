"""noduleclip: a semantic-guided vision-language model for lung-nodule malignancy on CT."""

from noduleclip.version import __version__

__all__ = ["NoduleClip", "__version__"]


def __getattr__(name: str):
    """`NoduleClip` is imported on first use, so that `import noduleclip` stays light."""
    if name == "NoduleClip":
        from noduleclip.predict.api import NoduleClip
        return NoduleClip
    raise AttributeError(f"module 'noduleclip' has no attribute {name!r}")
