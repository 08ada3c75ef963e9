"""What the user wants, as pure data: no I/O here."""
