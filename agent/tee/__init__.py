"""The normal world's side of the TEE boundary (OP-TEE's host/): client, chain file, handshake."""
