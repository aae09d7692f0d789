"""omactl's config file (oma_server/omactl/config.py) through the real omactl process against a real OMA: the one
the first start writes, the one `tokens create --omactl-config` writes, where omactl finds one, what beats it, and
the files it refuses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from oma_server.omactl.config import OMACTL_CONFIG_FILE, load
from oma_server.server import OmaServer
from tests.omactl.conftest import Target, assert_one_error_line, run_omactl

#: no server, CA or token from the environment: what omactl knows comes from its config file
_ONLY_CONFIG = {"OMA_SERVER": "", "OMA_CA": "", "OMA_TOKEN": ""}


def _with_config(path: Path, **extra: str) -> dict[str, str]:
    return {**_ONLY_CONFIG, "OMA_CONFIG": str(path), **extra}


async def test_the_first_start_writes_a_config_naming_the_admin_token_file(oma: OmaServer, address: Target) -> None:
    data_dir = oma.app.settings.data_dir
    path = data_dir / OMACTL_CONFIG_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert address.token not in path.read_text()  # it names the token's file, it does not copy the secret
    config = load(path)
    assert (config.server, config.ca, config.token) == (address.server, address.ca, address.token)
    listed = await run_omactl(address, "tokens", "list", env=_with_config(path))
    assert listed.code == 0 and "initial-admin" in listed.out, listed.err


async def test_a_token_made_with_a_config_is_all_its_user_needs(address: Target, tmp_path: Path) -> None:
    """`tokens create --omactl-config` writes the new token with this OMA's address and CA; omactl with only that
    file acts with the new token's role — and a variable or a flag beats the file."""
    path = tmp_path / "ops" / "viewer.toml"
    made = await run_omactl(address, "tokens", "create", "ops-viewer", "--role", "viewer", "--omactl-config", str(path))
    assert made.code == 0 and f"Wrote {path} (0600)" in made.out, made.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = load(path).token
    assert secret is not None and secret in made.out
    assert (await run_omactl(address, "appliances", "list", env=_with_config(path))).code == 0
    denied = await run_omactl(address, "tokens", "list", env=_with_config(path))
    assert_one_error_line(denied, "PERMISSION_DENIED", "needs the admin role")
    admin_by_variable = await run_omactl(address, "tokens", "list", env=_with_config(path, OMA_TOKEN=address.token))
    assert admin_by_variable.code == 0 and "ops-viewer" in admin_by_variable.out, admin_by_variable.err
    wrong_flag = await run_omactl(address, "--token", "oma_nope_nope", "appliances", "list", env=_with_config(path))
    assert_one_error_line(wrong_flag, "UNAUTHENTICATED", "(TOKEN_INVALID)")
    again = await run_omactl(address, "tokens", "create", "ops-2", "--role", "viewer", "--omactl-config", str(path))
    assert_one_error_line(again, f"--omactl-config {path} exists", code=2)
    tokens = json.loads((await run_omactl(address, "--json", "tokens", "list")).out)
    assert [t["name"] for t in tokens].count("ops-2") == 0  # refused before the token was made


async def test_the_user_config_is_found_in_the_xdg_directory(address: Target, tmp_path: Path) -> None:
    (tmp_path / "omactl").mkdir()
    path = tmp_path / "omactl" / "config.toml"
    path.write_text(f'server = "{address.server}"\nca = "{address.ca}"\ntoken = "{address.token}"\n')
    path.chmod(0o600)
    found = await run_omactl(address, "tokens", "list", env={**_ONLY_CONFIG, "XDG_CONFIG_HOME": str(tmp_path)})
    assert found.code == 0 and "initial-admin" in found.out, found.err


async def test_bad_config_files_are_refused_naming_the_file_and_what_to_do(address: Target, tmp_path: Path) -> None:
    cases = {
        "readable.toml": (f'server = "{address.server}"\ntoken = "{address.token}"\n', 0o644, "chmod 600"),
        "unknown.toml": ('server = "x:1"\nport = 5\n', 0o600, "unknown key 'port'"),
        "both.toml": ('token = "a"\ntoken_file = "t"\n', 0o600, "give token or token_file, not both"),
        "typed.toml": ("insecure = 'yes'\n", 0o600, "insecure must be true or false"),
        "garbled.toml": ("server = \n", 0o600, "is not TOML"),
        "no-token-file.toml": ('token_file = "missing.token"\n', 0o600, "cannot read token_file"),
    }
    for name, (text, mode, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        os.chmod(path, mode)
        refused = await run_omactl(address, "appliances", "list", env=_with_config(path))
        line = assert_one_error_line(refused, str(path), message, code=2)
        assert address.token not in line
    missing = await run_omactl(address, "appliances", "list", env=_with_config(tmp_path / "absent.toml"))
    assert_one_error_line(missing, "cannot read the omactl config", code=2)
