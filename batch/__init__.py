"""The batch layer: daily recomputation of exact views from the lake, published into the store."""
