"""gRPC servicers: decode a request, call a service, encode the answer. No business logic here."""
