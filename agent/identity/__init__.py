"""The device's on-chain identity: EIP-712 typed data, the device NFT's mint request and its metadata."""
