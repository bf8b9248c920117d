"""creditq's benchmarks: ``python -m bench`` (``make bench``). Every ratio is against a baseline measured in the same
run on the same machine (pgbench for the submit path, arq's own no-op jobs for the settle path). Benchmarks
measure; they assert nothing. See BENCHMARKS.md for how to read the results."""
