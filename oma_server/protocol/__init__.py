"""The appliance protocol as domain values: what an appliance and the OMA say to each other (`stream`), the commands
and their results (`commands`), the VMware inventory an appliance reports (`inventory`). No wire types here:
`oma_server.wire` turns these into `vma.v1` messages and back."""
