"""Server reflection that keeps the proto comments, so `grpcurl describe` shows the SDK documentation.

grpc's reflection servicer answers with `FileDescriptor.CopyToProto`, and the descriptors protoc embeds in
`*_pb2.py` carry no source info (comments). `make generate` therefore also writes the same files as one descriptor
set with source info (`generated/oma/descriptor_set.binpb`); `SourceInfoPool` stands in for the descriptor pool
the servicer reads: every lookup goes to the real pool, and a file it returns copies itself from that set, comments
included. Written here rather than as a reflection servicer of our own: grpc's servicer stays the one that speaks
the protocol (v1alpha, what grpcurl and buf use); only where it reads descriptors from changes.
"""

from __future__ import annotations

from functools import cached_property
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

DESCRIPTOR_SET = "descriptor_set.binpb"


def load_descriptor_set() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The generated descriptor set with source info, by file name (empty when the file is missing)."""
    try:
        raw = resources.files("oma").joinpath(DESCRIPTOR_SET).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        return {}
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    return {f.name: f for f in files}


class _FileWithSource:
    """A FileDescriptor whose CopyToProto includes the comments (the rest is the real descriptor's)."""

    def __init__(self, real: FileDescriptor, pool: SourceInfoPool) -> None:
        self._real = real
        self._pool = pool

    @property
    def name(self) -> str:
        return self._real.name

    @property
    def dependencies(self) -> list[_FileWithSource]:
        return [self._pool.wrap(d) for d in self._real.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        documented = self._pool.documented.get(self._real.name)
        if documented is None:
            self._real.CopyToProto(proto)
        else:
            proto.CopyFrom(documented)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class SourceInfoPool:
    """The lookups grpc's reflection servicer makes of a descriptor pool, answered with documented files."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    @cached_property
    def documented(self) -> dict[str, descriptor_pb2.FileDescriptorProto]:
        return load_descriptor_set()

    def wrap(self, file: FileDescriptor) -> _FileWithSource:
        return _FileWithSource(file, self)

    def FindFileByName(self, name: str) -> _FileWithSource:
        return self.wrap(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _FileWithSource:
        return self.wrap(self._pool.FindFileContainingSymbol(symbol))

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._pool.FindMessageTypeByName(name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return self._pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return self._pool.FindAllExtensions(message)
