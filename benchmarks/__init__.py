"""Benchmarks: each script measures, then writes JSON, a Markdown table and (where useful) a PNG plot."""
