"""mmchat benchmarks: speed and memory figures measured as ratios against a baseline in one run.

Run all with ``python -m benchmarks`` (or ``scripts/bench.sh``); results go to
``benchmarks/results.json`` and a Markdown table in ``docs/benchmarks.md``. Every figure is the
median of repeats. The test suite smoke-runs each benchmark at ``--quick`` size.
"""
