"""Kind ``container``: replicas run as containers through a Docker Engine API (llama.cpp's server, vLLM's
OpenAI server, or any image), with llama.cpp RPC worker containers on named engines."""
