"""The course tooling: run, test, check and scaffold the lessons (`python -m roadmap_tools --help`).

Runs from a clone of the repository; it is not part of the `llm-roadmap` package that Colab installs, so a lesson
never imports it. The lesson library is `llm_roadmap`.
"""
