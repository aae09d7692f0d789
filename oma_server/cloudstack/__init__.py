"""CloudStack: the async adapter the workflows call, and a simulator that speaks CloudStack's HTTP API.

- `CloudStackClient` (client.py) wraps the `cs` package's `AIOCloudStack`: typed results (models.py), typed
  errors (errors.py), async jobs awaited with a deadline, retries of transient failures.
- `CloudLimits` (limits.py) reads what the cloud allows: volume sizes, data volumes per VM.
- `devices.py` finds an attached volume's device the way a KVM guest names it.
- `CloudStackSimulator` (simulator.py, with the sim_* modules by resource) is the in-process CloudStack used by
  tests, the demo and `oma-server --cloudstack sim`; `oma-cloudstack-sim` (simulator_cli.py) runs it standalone.

docs/cloudstack.md lists the CloudStack versions and hypervisors this is written for and the differences handled.
"""

from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.devices import by_id_name, device_path, disk_serial
from oma_server.cloudstack.errors import CloudStackError, is_transient

__all__ = [
    "CloudStackError",
    "CloudStackSettings",
    "by_id_name",
    "device_path",
    "disk_serial",
    "is_transient",
]
