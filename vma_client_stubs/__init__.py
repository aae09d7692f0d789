"""What a VMA imports: the stream client, the operator client, and the reference agent built on them."""
