"""tee_sim: the secure world, an emulated OP-TEE trusted application in its own process."""

__version__ = "0.1.0"
