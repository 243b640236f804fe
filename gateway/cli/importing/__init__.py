"""``llm-gateway import``: manifests from a llama-cpp-python server config file or a llama-swap config.

``convert`` is the conversion, data to data: it reads the source and, for paths, whether a file exists and a
GGUF's training context, and returns the planned manifests with one ``Issue`` for every setting that is not
carried over exactly (``not carried``: dropped, with why; ``warning``: carried, but behaves differently or
needs a look; ``note``: carried, or dropped with no effect). Nothing is dropped without an issue.

``write`` puts them in ``--out`` only once the gateway's own loader
(``gateway.config.loading.load_directory``, what ``llm-gateway check`` runs) accepts them in a scratch
directory, so an import never leaves a manifest the gateway would refuse. The one exception is a model file
missing on this machine (the source may describe another one): that manifest is written, with a warning. After
writing, ``--out`` is loaded again and what the loader says about the written files is the result.

The modules, one concern each:

- ``source``: reading the source file, and ``SourceError``.
- ``conversion``: ``convert``: the format recognised, names made unique, the manifests' header comments.
- ``llama_cpp_python``: llama-cpp-python's server config to llama_cpp manifests.
- ``llama_swap``: llama-swap's config.yaml: macros, commands, and the settings around them.
- ``llama_server_flags``: a llama-server command line to a llama_server backend.
- ``values``: what both converters share: paths, the training context, names, the manifest document.
- ``write``: the loader's check, and writing the files.
- ``report``: what an import finds (``Conversion``, ``Issue``, ``WriteResult``) and the report of it.
"""

from gateway.cli.importing.conversion import Format, convert
from gateway.cli.importing.report import Conversion, Issue, Kind, Planned, WriteResult, report
from gateway.cli.importing.source import SourceError, read_source
from gateway.cli.importing.write import render, write

__all__ = [
    "Conversion",
    "Format",
    "Issue",
    "Kind",
    "Planned",
    "SourceError",
    "WriteResult",
    "convert",
    "read_source",
    "render",
    "report",
    "write",
]
