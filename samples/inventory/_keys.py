"""Cache keys shared by the web app (which caches) and the import job (which invalidates)."""

ALL_PRODUCTS_KEY = "inventory:products"


def product_key(sku: str) -> str:
    return f"inventory:product:{sku}"
