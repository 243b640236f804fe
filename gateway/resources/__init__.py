"""Where models can run: the Docker hosts (engines) and the memory devices each adds to the budget."""
