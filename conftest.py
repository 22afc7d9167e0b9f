"""Repository-wide pytest setup: lesson notebooks are collected as tests (one per seed) by the harness's plugin."""

pytest_plugins = ["roadmap_tools.pytest_plugin"]
