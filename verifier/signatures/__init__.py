"""Ownership signatures written into a ticket: QR codes in the mask topology (`qr`)."""
