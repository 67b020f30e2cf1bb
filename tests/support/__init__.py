"""Test support: real secure-world processes, a frame-aware relay, a normal-world worker."""
