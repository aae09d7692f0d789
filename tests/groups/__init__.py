"""Machine groups: their API, group failover in boot order, group schedules."""
