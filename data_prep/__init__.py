"""Data layer: registered dataset sources (:mod:`data_prep.sources`) turned into one prepared dataset."""
