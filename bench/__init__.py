"""Keyfob's benchmark harness (issue #6): one command, one machine, one run.

Why a harness and not a number in a README: latency and throughput depend on the machine,
so every figure is printed next to an anchor measured in the same run (nginx direct, a bare
Starlette+aiohttp proxy, LiteLLM) and the targets are ratios, never absolute times.

Run ``python -m bench --help`` from the repository root.
"""
