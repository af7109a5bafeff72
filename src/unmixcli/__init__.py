"""unmix: split songs into stems with state-of-the-art neural networks.

Importing this package is cheap: torch is only imported when a model is used,
so that `unmix --help` starts fast.
"""

__version__ = "0.1.0"

__all__ = ["Separator", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import unmixcli` (and the CLI's --help path) never imports torch.
    if name == "Separator":
        from .api import Separator

        return Separator
    raise AttributeError(f"module 'unmixcli' has no attribute {name!r}")
