"""Work utility: the device's fixed capacity, its per-cycle work meters and the signed cycle report."""
