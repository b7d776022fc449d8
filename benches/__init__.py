"""unlearnx benchmarks: fused losses against the materialising reference."""
