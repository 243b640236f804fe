"""The gateway's settings: ``GATEWAY_*`` environment variables and CLI flags (flags win), and the Docker
engines container models may run on. One ``Settings`` is built at startup and passed explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backends.spec import Duration

ENGINE_URL = r"^(unix|tcp|ssh|http|https)://\S+$"
# Added to a model's learned peak (gateway.scheduling.learned): the peak is one measurement, and a later fill
# may touch a few more pages. 4% keeps the budget within issue 19's +-5% of the peak and never under it.
DEFAULT_LEARNED_MARGIN = 0.04


class EngineTlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True


class NodeSettings(BaseModel):
    """A swarm node's figures, over what the node reports (its RAM; its GPUs' memory, which Swarm does not
    know); the node is named by its label ``llm-gateway.name``, else its hostname."""

    model_config = ConfigDict(extra="forbid")

    memory: ByteSize | None = None
    gpus: list[ByteSize] | None = None
    address: str | None = Field(None, description="Where its host-network containers answer.")


class EngineSettings(BaseModel):
    """A Docker Engine API (a host), or a Docker Swarm manager (each node a host), that container models may
    run on, with the memory it offers them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["docker", "swarm"] = Field(
        "docker", description="docker: one host's engine; swarm: a manager, whose nodes are the hosts."
    )
    url: str = Field(
        pattern=ENGINE_URL, description="unix:///var/run/docker.sock, tcp://host:2376, ssh://..."
    )
    address: str | None = Field(
        None,
        description="How the gateway, and other hosts' containers, reach its published ports; default: the "
        "URL's host, or 127.0.0.1 for unix:// (give the host's LAN address where it runs RPC workers).",
    )
    publish_ip: str | None = Field(
        None,
        description="The host interface servers are published on ('' for all); default 127.0.0.1 for "
        "unix://, else all. RPC workers are always published on all: other hosts' containers reach them.",
    )
    tls: EngineTlsSettings | None = None
    memory: ByteSize | None = Field(
        None,
        description="RAM for CPU containers. Default for a unix:// engine: shared with the gateway's own "
        "--memory-budget (the same machine); required for other engines that run CPU containers.",
    )
    gpus: list[ByteSize] | None = Field(
        None, description="Memory of each GPU, by index. Default: NVML for a unix:// engine, else none."
    )
    timeout: Duration = Field(60.0, description="Deadline of each engine API call.")
    nodes: dict[str, NodeSettings] = Field({}, description="swarm: figures of nodes, by node name.")
    ports: tuple[int, int] = Field(
        (20000, 29999), description="swarm: the range of ports its host-network replicas listen on."
    )
    watch_interval: Duration = Field(0.5, description="swarm: how often the nodes and tasks are read.")
    stop_grace: Duration = Field(10.0, description="swarm: the services' stop grace period.")
    gpu_kind: str = Field("gpu", description="swarm: the generic resource kind that counts GPUs.")

    @property
    def local(self) -> bool:
        return self.url.startswith("unix://") and self.kind == "docker"


class Settings(BaseSettings):
    """Process-wide settings. One instance is built at startup and passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    manifests: Path = Path("manifests")
    memory_budget: ByteSize | None = Field(
        None, description="Bytes the loaded models may use; default 90% of the RAM available at startup."
    )
    max_queue: int = Field(64, ge=0, description="Requests that may wait per model before 429.")
    queue_timeout: Duration = Field(300.0, description="How long a request waits for a free replica.")
    load_timeout: Duration = Field(600.0, description="How long a request waits for its model to load.")
    drain_grace: Duration = Field(30.0, description="Grace for in-flight requests when a model is evicted.")
    swap_policy: Literal["swap-aware", "fifo"] = Field(
        "swap-aware",
        description="When models do not fit together: swap-aware lets a busy model serve while another's "
        "requests wait up to max_swap_wait (far fewer swaps); fifo swaps for the oldest request at once.",
    )
    max_swap_wait: Duration = Field(
        10.0, description="Default of a model's max_swap_wait (swap-aware admission), in seconds."
    )
    interactive_reserve: int = Field(
        1,
        ge=0,
        description="Default of a model's interactive_reserve: slots of a model with several kept for "
        "interactive requests (batch ones may hold the rest, and always at least one).",
    )
    preempt_batch: int = Field(
        3,
        ge=0,
        description="How many times a batch request may be preempted: an interactive request that finds "
        "every slot of its model taken cuts a batch request that has sent its client nothing yet, which "
        "runs again afterwards (0: never).",
    )
    load_failure_backoff: Duration = Field(5.0, description="First wait before retrying a failed load.")
    api_key: SecretStr | None = Field(None, description="One key for /v1 and /admin (earlier versions).")
    api_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description='API keys for /v1 by name (JSON), e.g. {"alice": "sk-..."}.'
    )
    api_keys_file: Path | None = Field(None, description="A YAML file mapping key names to API keys.")
    admin_key: SecretStr | None = Field(None, description="The key for /admin (and /v1).")
    key_max_concurrency: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Requests an API key may have under way at once, waiting ones included, by key name "
        '(JSON), e.g. {"nightly-evals": 8}; beyond it a 429 with Retry-After. Keys not named: no cap.',
    )
    key_max_queued: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Requests an API key may have waiting at once, across models, for a free replica or a "
        'load, by key name (JSON), e.g. {"nightly-evals": 32}; beyond it a 429 (key_queue_full) with '
        "Retry-After. Keys not named: no cap (each model's max_queue still holds).",
    )
    key_priorities: dict[str, Literal["interactive", "batch"]] = Field(
        default_factory=dict,
        description='The priority class of API keys by name (JSON), e.g. {"nightly-evals": "batch"}; others '
        "are interactive. Interactive requests go ahead of batch ones in every queue; a request may lower "
        "its own with the header X-Priority: batch.",
    )
    metrics_key: SecretStr | None = Field(None, description="If set, /metrics needs it (or the admin key).")
    state_file: Path | None = Field(
        None,
        description="The file keeping pins set through the admin API (<manifests>/.llm-gateway-pins.json)",
    )
    learned_margin: float = Field(
        DEFAULT_LEARNED_MARGIN,
        ge=0.0,
        le=1.0,
        description="The fraction added to a model's learned memory peak when the budget uses it; a peak "
        "over the estimate by more than this is logged (learned.json beside the state file, else "
        "<manifests>/.llm-gateway-learned.json).",
    )
    responses_store: Path | None = Field(
        None,
        description="The SQLite file of stored Responses API responses (responses.sqlite3 beside the state "
        "file, else <manifests>/.llm-gateway-responses.sqlite3).",
    )
    responses_max_count: int = Field(10_000, ge=1, description="Stored responses kept; the oldest go first.")
    responses_max_bytes: ByteSize = Field(
        ByteSize(256 * 2**20), gt=0, description="Bytes of stored responses kept; the oldest go first."
    )
    responses_max_age: Duration = Field(
        30 * 86400.0, gt=0, description="Seconds a stored response is kept (OpenAI's default: 30 days)."
    )
    llama_server: Path | None = Field(None, description="The llama-server binary for llama_server models.")
    engines: list[EngineSettings] = Field(
        [],
        description="Docker engines for container models (JSON); default: DOCKER_HOST or the local socket.",
    )
    engines_file: Path | None = Field(None, description="A YAML or JSON file with the engines list.")
    instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Labels this gateway's containers; default: derived from host, port and manifests.",
    )
    cluster_etcd: Annotated[list[str], NoDecode] = Field(
        [],
        description="Cluster mode: the etcd members (host:port, a JSON list or comma-separated) through "
        "which several gateways share one fleet; empty (the default): this gateway runs alone.",
    )
    cluster_name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Cluster mode: the fleet's name, so several fleets can share one etcd.",
    )
    cluster_ttl: Duration = Field(
        10.0, gt=0, description="Cluster mode: the lease of each gateway; a dead leader is replaced after it."
    )
    cluster_member: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Cluster mode: this gateway's name in the fleet; default: its instance id.",
    )
    cluster_url: str | None = Field(
        None, description="Cluster mode: this gateway's address as others see it (default http://host:port)."
    )
    allow_open: bool = Field(
        False,
        description="Serve /v1 without API keys on an address other than loopback, on purpose; without it "
        "`serve` refuses to start so (anyone who can reach the port could use every model).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    watch: bool = Field(False, description="Reload whenever a manifest file changes.")
    metrics: bool = Field(
        True, description="Measure requests for /metrics, the stats line and the console's activity."
    )
    activity_size: int = Field(
        200,
        ge=0,
        le=100_000,
        description="Requests kept for the console's Activity page and GET /admin/activity (the last ones; "
        "each a small record: model, key name, status, tokens, TTFT, tokens/s); 0: none.",
    )
    console_read_only: bool = Field(
        False,
        description="Let GET /admin/* (so the console at /ui, read-only) answer without the admin key; its "
        "actions (load, unload, pin, reload) still need it. Off by default: with an admin key set, the "
        "console asks for it.",
    )
    stats_interval: Duration = Field(
        10.0, description="Seconds between stats lines in the log (one per model with traffic); 0: off."
    )
    engine_scrape_interval: Duration = Field(
        5.0, description="Seconds between reads of the engines' own /metrics (llama-server, vLLM); 0: off."
    )
    max_body_bytes: ByteSize = Field(
        ByteSize(32 * 2**20),
        gt=0,
        description="Largest request body; a larger one is a 413 before it is read, and the connection "
        "closes. A 128k-token prompt is under 1 MiB of JSON; the rest is room for base64 images.",
    )
    max_header_bytes: ByteSize = Field(
        ByteSize(64 * 2**10),
        gt=0,
        description="Largest request head (URL plus header names and values); a larger one is a 431, refused "
        "before the rest of it is buffered.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open client connections (idle keep-alive ones count) served at once; a request on one "
        "beyond them is answered 503 by uvicorn and its connection closed.",
    )
    keep_alive_timeout: Duration = Field(
        30.0,
        description="An idle client connection is closed after this long: longer than clients' own idle "
        "expiry (httpx, so the OpenAI SDK: 5 s), so that a client never sends onto a closing connection.",
    )
    request_head_timeout: Duration = Field(
        10.0,
        gt=0,
        description="A new connection must have sent a whole request head within this long, and a head begun "
        "on a kept-alive one must be whole this long after its first byte; else a 408 and the connection "
        "closes (a connection that sent nothing is just closed). Bounds slow-loris clients.",
    )
    request_body_timeout: Duration = Field(
        120.0,
        gt=0,
        description="A request's whole body must arrive within this long after its head (the largest body at "
        "about 2 Mbit/s); else a 408 and the connection closes. Bounds clients that trickle a body.",
    )
    gc_freeze: bool = Field(
        True, description="serve: gc.freeze() what exists at startup (the proxy p99: bench/README.md)."
    )
    graceful_shutdown_timeout: Duration = Field(
        30.0,
        description="On SIGTERM/SIGINT, how long in-flight HTTP requests (streams too) may finish before "
        "uvicorn cancels them; the lifespan's shutdown (the models') follows.",
    )
    upstream_connect_timeout: Duration = Field(
        10.0, gt=0, description="Default of a model's timeouts.connect: to open a connection to an upstream."
    )
    upstream_first_byte_timeout: Duration = Field(
        600.0,
        gt=0,
        description="Default of a model's timeouts.first_byte: from sending a request to the upstream's "
        "first bytes. Long, as a long prompt's prefill comes first; past it, another replica, else a 504.",
    )
    upstream_idle_timeout: Duration = Field(
        120.0,
        gt=0,
        description="Default of a model's timeouts.idle: between two pieces of a response's body; past it, "
        "an error event ends the stream and the replica is ejected.",
    )
    max_upstream_body_bytes: ByteSize = Field(
        ByteSize(128 * 2**20),
        gt=0,
        description="Largest non-streamed answer from an upstream (read whole before it is passed on); a "
        "larger one is a 502. Streams are passed on as they arrive and are not bounded by it.",
    )
    stream_keepalive: Duration = Field(
        5.0,
        ge=0,
        description="A streaming request that has waited this long for its model (a load, a swap) gets its "
        "stream started and a keep-alive (an SSE comment; Anthropic's ping) this often until admitted, so "
        "proxies in between do not time it out; an error after that comes as the API's error event. 0: off.",
    )
    send_timeout: Duration = Field(
        60.0,
        gt=0,
        description="How long a client may take to accept one piece of its response (a client that stops "
        "reading): past it the connection is cut, the upstream request cancelled and the slot freed.",
    )
    upstream_total_timeout: Duration = Field(
        3600.0, gt=0, description="Default of a model's timeouts.total: one request, retries included."
    )

    @field_validator("cluster_etcd", mode="before")
    @classmethod
    def _endpoints(cls, value: object) -> object:
        """``host:port,host:port`` as well as a JSON list (``GATEWAY_CLUSTER_ETCD``)."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def learned_path(self) -> Path:
        """Where the learned memory peaks are kept (``gateway.scheduling.learned_store``)."""
        if self.state_file is not None:
            return self.state_file.parent / "learned.json"
        return self.manifests / ".llm-gateway-learned.json"

    def responses_path(self) -> Path:
        if self.responses_store is not None:
            return self.responses_store
        if self.state_file is not None:
            return self.state_file.parent / "responses.sqlite3"
        return self.manifests / ".llm-gateway-responses.sqlite3"
