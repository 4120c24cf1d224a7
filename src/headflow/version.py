"""headflow's version (one definition; the package and every result's provenance read it)."""

__version__ = "0.1.0"
