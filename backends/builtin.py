"""The kinds this package ships, as one registry. Importing them loads no engine: each kind imports its
replicas' code on the first load of a model of that kind."""

from __future__ import annotations

from backends.container.kind import CONTAINER
from backends.kinds import Kinds
from backends.llama_cpp.kind import LLAMA_CPP
from backends.llama_server.kind import LLAMA_SERVER
from backends.remote.kind import REMOTE


def builtin_kinds() -> Kinds:
    return Kinds([LLAMA_CPP, LLAMA_SERVER, REMOTE, CONTAINER])
