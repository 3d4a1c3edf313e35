"""The benchmarks, run small: they run and produce figures (how fast is the benchmarks' business)."""
