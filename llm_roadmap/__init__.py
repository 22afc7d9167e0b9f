"""Helper package of the LLM & MLLM Research Roadmap course."""
