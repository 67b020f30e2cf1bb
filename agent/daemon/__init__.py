"""The normal world as a service: provisioning, the supervisor `aitn agent run`, systemd notification."""
