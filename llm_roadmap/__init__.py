"""The lesson library of the LLM & MLLM Research Roadmap course: what the notebooks import, in Colab and locally.

Grouped by kind, so a new component has an obvious home:

- `config`, `report`: infrastructure every notebook uses (SIZE, seeds, device and dtype; recording results).
- `data/`: corpora, synthetic data and loaders (Python's own docs offline, the full config's hub loaders,
  `data.synthetic.MarkovLanguage`); phase 5's question sets and phase 7's synthetic scenes and audio go here.
- `models/`: components a lesson built from scratch and later lessons reuse (`models.gpt`, lesson 3.2's GPT;
  `models.vlm`, lesson 7.1's ViT and 7.2's LLaVA-style connector and scene VLM).
- Lesson components by phase: `tokenizer` (3.1's byte-level BPE), `quantization` (4.3's weight-only quantizers,
  GPTQ, AWQ-style, perplexity), `engine` (4.4's KV-cache engine with continuous batching), `rag` and
  `rag_pipeline` (phase 5's embedders, indexes, chunking, reranking, cited answers, grading), `alignment` (6.2's
  log-probs, SFT, DPO/IPO losses and preference training), `synthetic_data` (8.4's generation, filters, MinHash
  dedup, decontamination), `evaluation` (8.5's log-likelihood scoring equal to lm-eval, bootstrap, calibration),
  `safety` (8.6's guard data, judges, injection cases).
- `tasks/`: program-judged tasks with their checkers (phase 6's rewards, phase 8's evaluations).
- `serving/`: service code that notebooks start as real processes (phase 9's OpenAI-compatible server, with the
  engine and the RAG pipeline as backends).

A component lands here only once a lesson has taught it in visible code; the `tests/test_teaching_copies*.py` files
prove the notebook's copy and this one equal. The course tooling (runner, checks, roadmap, test plugin) is
`roadmap_tools/` in the repository, which is never installed with this package.
"""
