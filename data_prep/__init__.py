"""Data layer: sources (synthetic, MIMIC-III, MIMIC-IV) turned into one prepared dataset."""
