"""The export stage: the final model as a GGUF for llama.cpp and Ollama, with its model card."""
