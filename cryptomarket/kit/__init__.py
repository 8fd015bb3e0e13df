"""Domain-free tools the routes share."""
