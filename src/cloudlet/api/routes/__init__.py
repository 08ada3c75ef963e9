"""Route families of /api/v1, one module per engine service."""
