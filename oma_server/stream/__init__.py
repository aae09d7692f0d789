"""The VMA stream: sessions (one per appliance), the durable command outbox, liveness."""
