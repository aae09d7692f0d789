"""omactl's configuration file: where the OMA is, the CA that proves it, and the operator's token — so that an
operator who was given one file (at the OMA's first start, by `oma-server create-token --omactl-config` or by
`omactl tokens create --omactl-config`) runs `omactl` with no flag and no variable.

    # omactl configuration (0600: it holds an API token)
    server = "oma.example.com:50051"
    ca = "/var/lib/oma/tls/ca.crt"          # relative paths are read from this file's directory
    token = "oma_..."                       # or token_file = "/var/lib/oma/admin.token"
    insecure = false

Where: `--config FILE`, else `$OMA_CONFIG`, else `$XDG_CONFIG_HOME/omactl/config.toml` (`~/.config/...`) when it
exists. A flag beats its variable, which beats the file, which beats the built-in default. A file that holds a token
and is readable by others is refused, as ssh refuses such a key: the token is the operator's role.

Written by hand rather than with a TOML writer library: it is four keys whose values are strings and one bool;
JSON's string escapes are valid TOML basic strings (non-ASCII kept as is), and every file written is read back with
the standard library's `tomllib` before it is put in place.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from oma_server.omactl.client import CliError
from vma_client_stubs.secret_files import write_private

_KNOWN = ("server", "ca", "token", "token_file", "insecure")
#: what the OMA's first start writes into its data dir, naming its initial admin token's file
OMACTL_CONFIG_FILE = "omactl.toml"


@dataclass(frozen=True)
class OmactlConfig:
    """What a configuration file says; None where it says nothing. Paths are absolute."""

    server: str | None = None
    ca: Path | None = None
    token: str | None = None
    insecure: bool | None = None
    source: Path | None = None  # the file it was read from


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "omactl" / "config.toml"


def find(explicit: str | None) -> OmactlConfig:
    """The configuration omactl runs with: `explicit` (--config or $OMA_CONFIG) must exist; the default place may
    hold nothing."""
    if explicit:
        return load(Path(explicit))
    path = default_path()
    return load(path) if path.is_file() else OmactlConfig()


def load(path: Path) -> OmactlConfig:
    """Read and check `path` whole: an unknown key, a value of the wrong type, a token both inline and in a file,
    or a token readable by others is a usage error naming the file."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise CliError(f"cannot read the omactl config {path}: {exc.strerror}", exit_code=2) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"omactl config {path} is not TOML: {exc}", exit_code=2) from None
    unknown = sorted(set(data) - set(_KNOWN))
    if unknown:
        raise CliError(f"omactl config {path}: unknown key {unknown[0]!r} (known: {', '.join(_KNOWN)})", exit_code=2)
    for key, value in data.items():
        wanted = bool if key == "insecure" else str
        if not isinstance(value, wanted) or (isinstance(value, str) and not value.strip()):
            what = "true or false" if wanted is bool else "a non-empty string"
            raise CliError(f"omactl config {path}: {key} must be {what}", exit_code=2)
    if "token" in data and "token_file" in data:
        raise CliError(f"omactl config {path}: give token or token_file, not both", exit_code=2)
    if "token" in data and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CliError(
            f"omactl config {path} holds an API token and is readable by others (mode {stat.S_IMODE(mode):04o}): "
            f"chmod 600 {path}",
            exit_code=2,
        )
    here = path.absolute().parent
    token = data.get("token")
    if "token_file" in data:
        token = _read_token(here / data["token_file"], path)
    return OmactlConfig(
        server=data.get("server"),
        ca=here / data["ca"] if "ca" in data else None,
        token=token,
        insecure=data.get("insecure"),
        source=path,
    )


def _read_token(token_file: Path, config: Path) -> str:
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise CliError(
            f"omactl config {config}: cannot read token_file {token_file}: {exc.strerror}", exit_code=2
        ) from None
    if not token:
        raise CliError(f"omactl config {config}: token_file {token_file} is empty", exit_code=2)
    return token


def write(
    path: Path,
    *,
    server: str,
    ca: Path | None = None,
    token: str | None = None,
    token_file: Path | None = None,
    insecure: bool = False,
) -> None:
    """Write a configuration atomically, 0600 (it holds a token or names one); paths are stored absolute."""
    if (token is None) == (token_file is None):
        raise ValueError("give exactly one of token and token_file")
    values: dict[str, str | bool] = {"server": server}
    if ca is not None:
        values["ca"] = str(ca.absolute())
    if token is not None:
        values["token"] = token
    if token_file is not None:
        values["token_file"] = str(token_file.absolute())
    if insecure:
        values["insecure"] = True
    lines = ["# omactl configuration (0600: it holds an API token or names its file); see omactl --help"]
    lines += [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in values.items()]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != values:  # the hand-written TOML reads back as what was meant, or nothing is written
        raise ValueError(f"cannot write {values.keys()} as TOML")
    write_private(path, text.encode("utf-8"))
