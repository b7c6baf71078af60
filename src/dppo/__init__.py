"""DPPO: Direct Preference and Penalization Optimization, as a reproducible pipeline.

All logic lives in this package; Snakemake rules and workflow scripts only call it.
"""

__version__ = "0.1.0"
