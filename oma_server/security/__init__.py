"""Trust (DESIGN.md §9): the OMA's certificate authority and the TLS its listeners serve. No grpc in here."""
