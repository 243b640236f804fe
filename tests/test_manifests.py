"""Manifest loading: every problem names its file and field, and one bad model never hides the good ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from backends.container.spec import LlamaCppContainer, VllmContainer
from backends.llama_cpp.spec import LlamaCppBackend
from backends.llama_server.spec import LlamaServerBackend
from backends.remote.spec import RemoteBackend
from gateway.cli import main
from gateway.config.loading import LoadedManifest, ManifestProblem, ManifestSet, load_directory, load_file
from tests.synthetic_gguf import write_model

MiB = 2**20


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    """A manifest directory with a dummy model file ``model.gguf`` next to the manifests."""
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "model.gguf").write_bytes(b"not really a model")
    return d


def write(directory: Path, filename: str, text: str) -> Path:
    path = directory / filename
    path.write_text(textwrap.dedent(text))
    return path


def names(result: ManifestSet) -> list[str]:
    return [item.manifest.name for item in result.models]


def llama(item: LoadedManifest) -> LlamaCppBackend:
    backend = item.manifest.backend
    assert isinstance(backend, LlamaCppBackend)
    return backend


def only_problem(result: ManifestSet) -> ManifestProblem:
    assert len(result.problems) == 1, result.problems
    return result.problems[0]


def test_valid_single_model_file(mdir: Path) -> None:
    path = write(
        mdir,
        "chat.yaml",
        """\
        name: chat
        aliases: [gpt-4o-mini]
        description: a test model
        backend:
          kind: llama_cpp
          model: model.gguf
          n_ctx: 1024
          parallel: 2
        pinned: true
        """,
    )
    result = load_file(path)
    assert result.problems == []
    assert names(result) == ["chat"]
    item = result.models[0]
    assert item.file == path
    m = item.manifest
    assert m.aliases == ["gpt-4o-mini"]
    assert m.pinned is True
    assert llama(item).n_ctx == 1024
    assert llama(item).replicas == 2
    assert m.memory is None and m.idle_ttl is None
    assert load_directory(mdir).problems == []


def test_file_with_a_models_list(mdir: Path) -> None:
    write(
        mdir,
        "two.yaml",
        """\
        models:
          - name: one
            backend: {kind: llama_cpp, model: model.gguf}
          - name: two
            aliases: [deux]
            backend: {kind: llama_cpp, model: model.gguf, embeddings: true}
        """,
    )
    result = load_directory(mdir)
    assert result.problems == []
    assert names(result) == ["one", "two"]
    assert llama(result.models[1]).embeddings is True
    assert all(item.file == mdir / "two.yaml" for item in result.models)


def test_unknown_top_level_key_is_refused(mdir: Path) -> None:
    path = write(
        mdir,
        "typo.yaml",
        """\
        name: typo
        backend: {kind: llama_cpp, model: model.gguf}
        pinnned: true
        """,
    )
    result = load_directory(mdir)
    assert result.models == []
    problem = only_problem(result)
    assert problem.file == path
    assert problem.field == "pinnned"
    assert str(path) in str(problem) and "pinnned" in str(problem)


def test_unknown_backend_key_is_refused(mdir: Path) -> None:
    path = write(
        mdir,
        "typo.yaml",
        """\
        name: typo
        backend: {kind: llama_cpp, model: model.gguf, bogus: 1}
        """,
    )
    problem = only_problem(load_directory(mdir))
    assert (problem.file, problem.field) == (path, "backend.bogus")


def test_missing_model_file(mdir: Path) -> None:
    path = write(
        mdir,
        "missing.yaml",
        """\
        name: missing
        backend: {kind: llama_cpp, model: nowhere.gguf}
        """,
    )
    result = load_directory(mdir)
    assert result.models == []
    problem = only_problem(result)
    assert (problem.file, problem.field) == (path, "backend.model")
    assert "file not found" in problem.reason
    assert str(mdir / "nowhere.gguf") in problem.reason


def test_wrong_type_names_the_field(mdir: Path) -> None:
    path = write(
        mdir,
        "ctx.yaml",
        """\
        name: ctx
        backend: {kind: llama_cpp, model: model.gguf, n_ctx: "abc"}
        """,
    )
    problem = only_problem(load_directory(mdir))
    assert (problem.file, problem.field) == (path, "backend.n_ctx")
    assert "integer" in problem.reason


def test_other_backend_kinds_load(mdir: Path) -> None:
    write(
        mdir,
        "kinds.yaml",
        """\
        models:
          - name: served
            backend:
              {kind: llama_server, model: model.gguf, replicas: 2, parallel: 4, rpc: ["10.0.0.2:50052"]}
          - name: far
            backend:
              kind: remote
              endpoints: [{url: "http://10.0.0.3:8000/v1"}, {url: "https://api.example.com/v1"}]
        """,
    )
    result = load_directory(mdir)
    assert result.problems == []
    served, far = (item.manifest.backend for item in result.models)
    assert isinstance(served, LlamaServerBackend) and served.model == (mdir / "model.gguf").resolve()
    assert (served.replicas, served.parallel, served.rpc) == (2, 4, ["10.0.0.2:50052"])
    assert isinstance(far, RemoteBackend) and far.replicas == 2


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ("{kind: llama_server, model: model.gguf, n_ctx: abc}", "backend.n_ctx"),
        ("{kind: remote, endpoints: [{url: 'ftp://x'}]}", "backend.endpoints[0].url"),
        ("{kind: container, preset: llamacpp, model: model.gguf, n_ctx: abc}", "backend.n_ctx"),
        (
            "{kind: container, preset: vllm, model: m, gpu_memory_utilization: 1.5}",
            "backend.gpu_memory_utilization",
        ),
        ("{kind: container, preset: raw, image: x, volumes: ['relative']}", "backend.volumes[0]"),
        (
            "{kind: container, preset: llamacpp, model: model.gguf, rpc_workers: [{engine: b}]}",
            "backend.rpc_workers[0].memory",
        ),
        ("{kind: container, preset: vllm, model: m, gpus: 2, tensor_parallel_size: 1}", "backend"),
        ("{kind: container, preset: nosuch, image: x}", "backend"),
    ],
)
def test_problem_in_other_backend_kinds_names_the_field(mdir: Path, backend: str, field: str) -> None:
    write(mdir, "k.yaml", f"name: k\nbackend: {backend}\n")
    assert only_problem(load_directory(mdir)).field == field


def test_container_presets_load_with_paths_on_the_engine_host(mdir: Path) -> None:
    write(
        mdir,
        "c.yaml",
        """        models:
          - name: here
            backend: {kind: container, preset: llamacpp, model: model.gguf, gpus: 1, volumes: ["data:/d:ro"]}
          - name: there
            backend: {kind: container, preset: llamacpp, model: /elsewhere/m.gguf}
            memory: 6GiB
          - name: v
            backend: {kind: container, preset: vllm, model: Qwen/Qwen2.5-7B, tensor_parallel_size: 2}
        """,
    )
    result = load_directory(mdir)
    assert result.problems == []
    here, there, v = (item.manifest.backend for item in result.models)
    assert isinstance(here, LlamaCppContainer) and here.model == str((mdir / "model.gguf").resolve())
    assert here.volumes == [f"{(mdir / 'data').resolve()}:/d:ro"]  # relative to the manifest
    assert isinstance(there, LlamaCppContainer) and there.model == "/elsewhere/m.gguf"
    assert isinstance(v, VllmContainer) and v.gpus == 2 and v.model == "Qwen/Qwen2.5-7B"  # an id, not a path


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ("backend: {kind: container, preset: llamacpp, model: /nowhere/m.gguf}", "give memory"),
        ("backend: {kind: container, preset: vllm, model: m}\nmemory: 1GiB", "memory does not apply"),
        ("backend: {kind: container, preset: raw, image: x, gpus: 1}", "give memory"),
        ("backend: {kind: container, preset: raw, image: x, gpus: 1, gpu_ids: [0, 1]}", "gpu_ids names 2"),
    ],
)
def test_container_manifest_mistakes_are_explained(mdir: Path, doc: str, words: str) -> None:
    write(mdir, "c.yaml", f"name: c\n{doc}\n")
    assert words in only_problem(load_directory(mdir)).reason


def test_unknown_backend_kind_names_backend(mdir: Path) -> None:
    write(mdir, "kind.yaml", "name: k\nbackend: {kind: nosuchengine, model: model.gguf}\n")
    problem = only_problem(load_directory(mdir))
    assert problem.field == "backend"
    assert "nosuchengine" in problem.reason


def test_bad_model_in_a_list_does_not_hide_the_good_one(mdir: Path) -> None:
    path = write(
        mdir,
        "mixed.yaml",
        """\
        models:
          - name: good
            backend: {kind: llama_cpp, model: model.gguf}
          - name: bad
            backend: {kind: llama_cpp, model: model.gguf, n_ctx: lots}
        """,
    )
    result = load_directory(mdir)
    assert names(result) == ["good"]
    problem = only_problem(result)
    assert (problem.file, problem.field) == (path, "models[1].backend.n_ctx")


def test_entry_of_a_models_list_that_is_not_a_mapping(mdir: Path) -> None:
    write(
        mdir,
        "mixed.yaml",
        """\
        models:
          - just-a-string
          - name: good
            backend: {kind: llama_cpp, model: model.gguf}
        """,
    )
    result = load_directory(mdir)
    assert names(result) == ["good"]
    assert only_problem(result).field == "models[0]"


def test_duplicate_name_across_files_keeps_the_first(mdir: Path) -> None:
    first = write(mdir, "a.yaml", "name: same\nbackend: {kind: llama_cpp, model: model.gguf, n_ctx: 512}\n")
    second = write(mdir, "b.yaml", "name: same\nbackend: {kind: llama_cpp, model: model.gguf, n_ctx: 1024}\n")
    result = load_directory(mdir)
    assert names(result) == ["same"]
    assert result.models[0].file == first
    assert llama(result.models[0]).n_ctx == 512
    problem = only_problem(result)
    assert problem.file == second
    assert problem.field == "name"
    assert "'same'" in problem.reason and str(first) in problem.reason


def test_alias_clashing_with_an_earlier_name_is_refused(mdir: Path) -> None:
    first = write(mdir, "a.yaml", "name: alpha\nbackend: {kind: llama_cpp, model: model.gguf}\n")
    second = write(
        mdir, "b.yaml", "name: beta\naliases: [alpha]\nbackend: {kind: llama_cpp, model: model.gguf}\n"
    )
    result = load_directory(mdir)
    assert names(result) == ["alpha"]
    problem = only_problem(result)
    assert (problem.file, problem.field) == (second, "aliases")
    assert "'alpha'" in problem.reason and str(first) in problem.reason


def test_alias_repeating_the_models_own_name_is_refused(mdir: Path) -> None:
    write(mdir, "a.yaml", "name: alpha\naliases: [alpha]\nbackend: {kind: llama_cpp, model: model.gguf}\n")
    result = load_directory(mdir)
    assert result.models == []
    assert "repeats the model's own name" in only_problem(result).reason


def test_empty_file(mdir: Path) -> None:
    path = write(mdir, "empty.yaml", "# nothing here yet\n")
    result = load_directory(mdir)
    assert result.models == []
    problem = only_problem(result)
    assert problem.file == path
    assert "empty" in problem.reason


def test_empty_models_list_is_a_problem(mdir: Path) -> None:
    write(mdir, "empty-list.yaml", "models: []\n")
    result = load_directory(mdir)
    assert result.models == []
    assert len(result.problems) == 1


def test_invalid_yaml(mdir: Path) -> None:
    path = write(mdir, "broken.yaml", "name: [unclosed\n")
    write(mdir, "fine.yaml", "name: fine\nbackend: {kind: llama_cpp, model: model.gguf}\n")
    result = load_directory(mdir)
    assert names(result) == ["fine"]
    problem = only_problem(result)
    assert problem.file == path
    assert "cannot read YAML" in problem.reason


def test_missing_directory(tmp_path: Path) -> None:
    problem = only_problem(load_directory(tmp_path / "nope"))
    assert "not found" in problem.reason


def test_yml_extension_is_read_and_other_files_ignored(mdir: Path) -> None:
    write(mdir, "a.yml", "name: a\nbackend: {kind: llama_cpp, model: model.gguf}\n")
    write(mdir, "README.md", "name: [not yaml at all\n")
    result = load_directory(mdir)
    assert names(result) == ["a"] and result.problems == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [('"300ms"', 0.3), ('"10m"', 600.0), ("5", 5.0), ('"90s"', 90.0), ('"1.5h"', 5400.0), ('"2"', 2.0)],
)
def test_idle_ttl_durations_parse_to_seconds(mdir: Path, text: str, seconds: float) -> None:
    write(mdir, "ttl.yaml", f"name: ttl\nbackend: {{kind: llama_cpp, model: model.gguf}}\nidle_ttl: {text}\n")
    result = load_directory(mdir)
    assert result.problems == []
    assert result.models[0].manifest.idle_ttl == pytest.approx(seconds)


@pytest.mark.parametrize("text", ['"10 minutes"', '"-5s"', "-1", '"1d"'])
def test_bad_durations_are_refused(mdir: Path, text: str) -> None:
    write(mdir, "ttl.yaml", f"name: ttl\nbackend: {{kind: llama_cpp, model: model.gguf}}\nidle_ttl: {text}\n")
    result = load_directory(mdir)
    assert result.models == []
    assert only_problem(result).field == "idle_ttl"


@pytest.mark.parametrize(("text", "expected"), [("512MiB", 512 * MiB), ("1GiB", 1024 * MiB), ("1000", 1000)])
def test_memory_override_parses_to_bytes(mdir: Path, text: str, expected: int) -> None:
    write(mdir, "mem.yaml", f"name: mem\nbackend: {{kind: llama_cpp, model: model.gguf}}\nmemory: {text}\n")
    result = load_directory(mdir)
    assert result.problems == []
    assert result.models[0].manifest.memory == expected


def test_model_path_is_relative_to_the_manifest_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = tmp_path / "conf" / "manifests"
    (manifests / "models").mkdir(parents=True)
    model = manifests / "models" / "m.gguf"
    model.write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(manifests, "m.yaml", "name: m\nbackend: {kind: llama_cpp, model: models/m.gguf}\n")
    result = load_directory(manifests)
    assert result.problems == []
    assert llama(result.models[0]).model == model.resolve()


def test_absolute_model_path_is_kept(tmp_path: Path, mdir: Path) -> None:
    model = tmp_path / "abs.gguf"
    model.write_bytes(b"x")
    write(mdir, "m.yaml", f"name: m\nbackend: {{kind: llama_cpp, model: '{model}'}}\n")
    result = load_directory(mdir)
    assert result.problems == []
    assert llama(result.models[0]).model == model.resolve()


# -- the `check` command ---------------------------------------------------------------------------------


def test_check_reports_a_bad_manifest(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(mdir, "bad.yaml", "name: bad\nbackend: {kind: llama_cpp, model: model.gguf, n_ctx: abc}\n")
    assert main(["check", "--manifests", str(mdir)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err
    assert str(path) in err
    assert "backend.n_ctx" in err


def test_check_prints_a_row_for_a_good_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "manifests"
    d.mkdir()
    write_model(d / "tiny.gguf")
    write(
        d,
        "tiny.yaml",
        """\
        name: tiny
        aliases: [gpt-tiny]
        backend: {kind: llama_cpp, model: tiny.gguf, n_ctx: 512}
        """,
    )
    write(d, "fixed.yaml", "name: fixed\nbackend: {kind: llama_cpp, model: tiny.gguf}\nmemory: 300MiB\n")
    assert main(["check", "--manifests", str(d)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:] if line.strip()}
    assert set(rows) == {"tiny", "fixed"}
    tiny = rows["tiny"].split()
    assert tiny[1] == "llama_cpp" and tiny[2] == "gpt-tiny" and tiny[3] == "1"
    assert int(tiny[4]) > 0 and tiny[5] == "MiB"
    assert "GGUF estimate" in rows["tiny"]
    assert "300 MiB" in rows["fixed"] and "manifest override" in rows["fixed"]
