"""``make bench``: opsflow's figures, each beside its baseline, in one run (``python -m bench``).

- :mod:`bench.bench_api_start`: start latency through the API against a direct Temporal start.
- :mod:`bench.bench_seed`: ``opsflow seed`` rows/s against the goal of 1 million requests in
  under two minutes.
"""
