"""GGUF files: a metadata reader, and the memory one llama.cpp engine takes for a model (shared by every kind
that runs llama.cpp)."""
