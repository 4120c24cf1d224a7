"""Loading, family adapters and token groups."""

from .adapter import (ADAPTERS, FamilyAdapter, adapter_class, adapter_for, family_names, load_adapter_file,
                      register_adapter)
from .groups import GROUP_NAMES, TokenGroups
from .loading import LoadedModel, load_model

__all__ = ["ADAPTERS", "FamilyAdapter", "GROUP_NAMES", "LoadedModel", "TokenGroups", "adapter_class", "adapter_for",
           "family_names", "load_adapter_file", "load_model", "register_adapter"]
