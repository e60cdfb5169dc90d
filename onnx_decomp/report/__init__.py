"""What runs found and decided, rendered: console tables, JSON, PNG figures."""
