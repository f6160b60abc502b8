"""The signal router: stores signals once, fires signal triggers (joins included) exactly once per
completed tuple, and satisfies steps waiting for signals."""
