"""CloudStackSettings from the environment."""

from __future__ import annotations

import pytest

from oma_server.cloudstack.config import CloudStackSettings
from oma_server.errors import Category, InvalidArgument


def test_from_env_reads_oma_variables() -> None:
    env = {
        "OMA_CLOUDSTACK_API_KEY": "k",
        "OMA_CLOUDSTACK_SECRET_KEY": "super-secret",
        "OMA_CLOUDSTACK_ZONE": "zone-1",
        "OMA_CLOUDSTACK_OMA_VM_ID": "vm-1",
    }
    s = CloudStackSettings.from_env("https://cs.example.com/client/api", env)
    assert (s.api_key, s.secret_key, s.zone, s.oma_vm_id) == ("k", "super-secret", "zone-1", "vm-1")
    assert "super-secret" not in repr(s)


def test_missing_keys_and_bad_url_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as info:
        CloudStackSettings.from_env("https://cs.example.com/client/api", {})
    assert info.value.category is Category.INVALID_ARGUMENT and info.value.reason == "CLOUDSTACK_KEYS_MISSING"
    with pytest.raises(InvalidArgument, match="not an http"):
        CloudStackSettings("cs.example.com", "k", "s")


def test_poll_interval_from_env() -> None:
    url = "https://cs.example.com/client/api"
    env = {"OMA_CLOUDSTACK_API_KEY": "k", "OMA_CLOUDSTACK_SECRET_KEY": "s", "OMA_CLOUDSTACK_POLL_INTERVAL": "0.05"}
    assert CloudStackSettings.from_env(url, env).poll_interval_s == 0.05
    assert CloudStackSettings.from_env(url, {**env, "OMA_CLOUDSTACK_POLL_INTERVAL": ""}).poll_interval_s == 2.0
    for bad, says in (("soon", "OMA_CLOUDSTACK_POLL_INTERVAL='soon'"), ("0", "positive"), ("-1", "positive")):
        with pytest.raises(InvalidArgument, match=says) as info:
            CloudStackSettings.from_env(url, {**env, "OMA_CLOUDSTACK_POLL_INTERVAL": bad})
        assert info.value.reason == "CLOUDSTACK_BAD_SETTING"
