"""Reimplementations of the published medication-recommendation baselines, one model per file."""
