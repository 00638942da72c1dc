"""Fused mixture-of-experts kernels whose tiles come from the planner."""
