"""LLM access: the one OpenAI-compatible client and the local llama.cpp server."""
