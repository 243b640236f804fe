"""Kind ``llama_server``: llama.cpp's ``llama-server`` launched as a supervised child process per replica; its
command line (shared with the container kind's ``llamacpp`` preset) and its build from source."""
