"""The backbone zoo: a registry of small builders (timm style; ``registry.py``, ``backbones.py``)."""

from .backbones import DEFAULT_BACKBONE
from .registry import BackboneSpec, Builder, get, names, register

__all__ = ["DEFAULT_BACKBONE", "BackboneSpec", "Builder", "get", "names", "register"]
