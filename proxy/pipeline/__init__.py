"""Per-request object (`Turn`) and the strategies that turn a chat request into a reply."""
