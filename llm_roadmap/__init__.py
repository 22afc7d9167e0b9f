"""The lesson library of the LLM & MLLM Research Roadmap course: what the notebooks import, in Colab and locally.

Grouped by kind, so a new component has an obvious home:

- `config`, `report`: infrastructure every notebook uses (SIZE, seeds, device and dtype; recording results).
- `data/`: corpora, synthetic data and loaders (Python's own docs offline, the full config's hub loaders,
  `data.synthetic.MarkovLanguage`); phase 5's question sets and phase 7's synthetic scenes and audio go here.
- `models/`: components a lesson built from scratch and later lessons reuse (`models.gpt`, lesson 3.2's GPT).
- `tasks/`: program-judged tasks with their checkers (phase 6's rewards, phase 8's evaluations).
- `serving/`: service code that notebooks start as real processes (phase 9's OpenAI-compatible server).

A component lands here only once a lesson has taught it in visible code; `tests/test_teaching_copies.py` proves the
notebook's copy and this one equal. The course tooling (runner, checks, roadmap, test plugin) is `roadmap_tools/`
in the repository, which is never installed with this package.
"""
