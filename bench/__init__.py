"""medrec-bench: the benchmark harness (CLI, evaluation, results, tables)."""
