"""aurora package."""
