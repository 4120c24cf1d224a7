"""Built-in family adapters, one module per family (see README.md here for adding one).

There is no import list: :mod:`headflow.models.adapter` imports every module of this package on first use
of the registry, and each module registers its adapters with ``@register_adapter``.
"""
