"""Ground-truth lookups of tabular NAS benchmarks (NAS-Bench-201), keyed by derived genotypes."""
