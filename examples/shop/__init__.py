"""Example "shop" application split across three databases (users, catalog, orders)."""
