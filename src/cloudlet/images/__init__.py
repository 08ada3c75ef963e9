"""Guest images: the built-in `tiny` today; catalog, imports and builders later."""
