"""`omactl`: the operator CLI on the oma.v1 API.

One module per command group: appliances, vms, jobs (jobs + replicate), watch, storage (exports, volumes),
failover (preflight, failover, rollback, network-map); `app` holds the parser and `main` (the console script),
`context` what the command modules share, `client` the connection and error lines, `render` the output.
"""

import os

# omactl answers in one line: grpc core's own log lines (a failed TLS handshake logs one) would break that, and
# the line omactl prints already says what failed and what to do. Set before grpc starts.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
