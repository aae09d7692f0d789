"""CloudStack connection settings: an API URL, keys, the zone and the OMA's own VM."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from oma_server.errors import InvalidArgument

ENV_API_KEY = "OMA_CLOUDSTACK_API_KEY"
ENV_SECRET_KEY = "OMA_CLOUDSTACK_SECRET_KEY"
ENV_ZONE = "OMA_CLOUDSTACK_ZONE"
ENV_OMA_VM_ID = "OMA_CLOUDSTACK_OMA_VM_ID"
ENV_POLL_INTERVAL = "OMA_CLOUDSTACK_POLL_INTERVAL"


@dataclass
class CloudStackSettings:
    """How to reach CloudStack. `secret_key` is kept out of repr() and therefore out of logs."""

    url: str
    api_key: str
    secret_key: str = field(repr=False)
    zone: str | None = None
    oma_vm_id: str | None = None
    #: one HTTP request (connect + read), seconds
    timeout_s: float = 30.0
    #: how long an async job (deployVirtualMachine, attachVolume, ...) may take before DEADLINE_EXCEEDED
    async_job_timeout_s: float = 600.0
    #: pause between two queryAsyncJobResult calls
    poll_interval_s: float = 2.0
    #: attempts for one request when the failure is transient (1 = no retry)
    retry_attempts: int = 5
    #: first backoff delay; doubles per attempt up to retry_max_delay_s, with full jitter
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 15.0
    #: "post" keeps parameters out of proxy access logs; "get" is what CloudMonkey uses
    http_method: str = "post"
    verify_tls: bool = True

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidArgument(
                f"CloudStack API URL {self.url!r} is not an http(s) URL such as "
                "https://cloudstack.example.com/client/api",
                reason="CLOUDSTACK_BAD_URL",
                url=self.url,
            )
        if not self.api_key or not self.secret_key:
            raise InvalidArgument(
                f"CloudStack API key and secret key are required (set {ENV_API_KEY} and {ENV_SECRET_KEY})",
                reason="CLOUDSTACK_KEYS_MISSING",
            )
        if self.http_method not in ("get", "post"):
            raise InvalidArgument(
                f"http_method must be 'get' or 'post', not {self.http_method!r}",
                reason="CLOUDSTACK_BAD_SETTING",
            )
        for name in ("timeout_s", "async_job_timeout_s", "poll_interval_s"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be positive", reason="CLOUDSTACK_BAD_SETTING")
        if self.retry_attempts < 1:
            raise InvalidArgument("retry_attempts must be at least 1", reason="CLOUDSTACK_BAD_SETTING")

    @classmethod
    def from_env(cls, url: str, environ: Mapping[str, str] | None = None, **overrides: object) -> CloudStackSettings:
        """Settings for `--cloudstack URL`, keys and ids from OMA_CLOUDSTACK_* environment variables (and the
        async-job poll interval: a CloudStack whose jobs finish in milliseconds need not be asked every 2 s)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "url": url,
            "api_key": env.get(ENV_API_KEY, ""),
            "secret_key": env.get(ENV_SECRET_KEY, ""),
            "zone": env.get(ENV_ZONE) or None,
            "oma_vm_id": env.get(ENV_OMA_VM_ID) or None,
        }
        if poll := env.get(ENV_POLL_INTERVAL, "").strip():
            try:
                values["poll_interval_s"] = float(poll)
            except ValueError:
                raise InvalidArgument(
                    f"{ENV_POLL_INTERVAL}={poll!r} is not a number of seconds (for example 0.5)",
                    reason="CLOUDSTACK_BAD_SETTING",
                ) from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
