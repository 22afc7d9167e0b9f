"""Where the course lives and what it contains: the one place that names the repository and the phases."""

from __future__ import annotations

# The GitHub repository that Colab badges and install lines point to. `python -m roadmap_tools slug OWNER/REPO`
# rewrites this line and every badge and install line in the notebooks and Markdown files.
REPO_SLUG = "YOUR-GITHUB-USER/llm-mllm-research-roadmap"
BRANCH = "main"
PLACEHOLDER_OWNER = "YOUR-GITHUB-USER"  # while REPO_SLUG names this owner, Colab setup cells stop with what to do

# (folder, title, the user's topics for the phase) in reading order.
PHASES: list[tuple[str, str, list[str]]] = [
    ("phase01_foundations", "Foundations",
     ["Math & statistics for AI", "Python, beginner to advanced", "Data structures & algorithms",
      "CS basics: networking, OS, databases", "Neurophysics & cognitive neuroscience"]),
    ("phase02_ml_dl", "ML & DL",
     ["Classical ML", "Neural networks", "CNNs", "RNNs and LSTMs", "Transformers"]),
    ("phase03_llms", "Core LLMs",
     ["Tokenization: BPE, SentencePiece", "Pretraining a GPT", "Post-training: SFT, RLHF/DPO",
      "Scaling laws & compute-optimal training", "Open LLM families: LLaMA, Mistral, Falcon, Gemma"]),
    ("phase04_efficient", "Efficient training & serving",
     ["LoRA, QLoRA, PEFT", "FlashAttention", "Quantization", "Serving with vLLM", "Efficient training at scale"]),
    ("phase05_rag", "Retrieval-augmented generation",
     ["Embeddings & vector databases", "Chunking & reranking", "RAG QA systems"]),
    ("phase06_alignment", "Alignment",
     ["RLHF basics", "DPO, GRPO", "Constitutional AI"]),
    ("phase07_multimodal", "Multimodal LLMs",
     ["CLIP, BLIP-2, LLaVA, Flamingo", "Vision + language", "Audio/speech: Whisper + LLM"]),
    ("phase08_advanced", "Advanced topics",
     ["Mixture of experts", "Long context & memory", "Reasoning: CoT, ReAct, ToT", "Synthetic data",
      "Evaluation: MMLU, HELM, lm-eval-harness", "Safety, robustness, red-teaming"]),
    ("phase09_deployment", "Deployment",
     ["Quantization & batching at scale", "APIs: FastAPI, vLLM, Ray Serve", "Monitoring & observability"]),
    ("phase10_capstones", "Capstones",
     ["Text-only LLM", "RAG assistant", "Vision-text chat MLLM", "Alignment/safety research"]),
]

PHASE_DIRS = [folder for folder, _, _ in PHASES]


def colab_url(notebook_path: str, slug: str | None = None, branch: str | None = None) -> str:
    """The Colab address of a notebook given its path relative to the repository root."""
    return f"https://colab.research.google.com/github/{slug or REPO_SLUG}/blob/{branch or BRANCH}/{notebook_path}"


def install_spec(slug: str | None = None, branch: str | None = None, extras: list[str] | None = None) -> str:
    """The pip requirement that installs this package (with `extras`) from the repository, as a Colab setup cell
    runs it."""
    chosen = f"[{','.join(extras)}]" if extras else ""
    return f"llm-roadmap{chosen} @ git+https://github.com/{slug or REPO_SLUG}@{branch or BRANCH}"
