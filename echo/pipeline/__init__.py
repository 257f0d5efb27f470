"""The workflow: a registry of nodes (the one source of truth for Snakemake and DVC) and their steps."""
