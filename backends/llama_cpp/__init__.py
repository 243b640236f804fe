"""Kind ``llama_cpp``: llama.cpp in the gateway's process (llama-cpp-python), one engine instance per replica,
each on its own thread."""
