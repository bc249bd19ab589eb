"""Benchmarks: each module ``bench/bench_*.py`` has ``main(argv) -> int`` and writes JSON + markdown."""
