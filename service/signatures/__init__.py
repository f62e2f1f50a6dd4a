"""QR signatures around registration and verification."""
