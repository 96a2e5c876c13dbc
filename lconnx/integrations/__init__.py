"""Adapters for the pipeline tools people already run; each imports its tool only when used."""
