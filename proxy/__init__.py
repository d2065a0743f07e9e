"""perg-proxy: an OpenAI-compatible personalization proxy with an online PERG robustness monitor."""

__version__ = "0.1.0"
