"""CloudStack: the async adapter the workflows call, and a simulator that speaks CloudStack's HTTP API.

- `CloudStackClient` (client.py) wraps the `cs` package's `AIOCloudStack`: typed results (models.py), typed
  errors (errors.py), async jobs awaited with a deadline, retries of transient failures.
- `CloudStackSimulator` (simulator.py) is the in-process CloudStack used by tests, the demo and
  `oma-server --cloudstack sim`; `oma-cloudstack-sim` (simulator_cli.py) runs it standalone.
"""

from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.devices import by_id_name, device_path
from oma_server.cloudstack.errors import CloudStackError, is_transient

__all__ = [
    "CloudStackError",
    "CloudStackSettings",
    "by_id_name",
    "device_path",
    "is_transient",
]
