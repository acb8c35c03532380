"""The tenant's teacher-cache entries: list and delete (the workers create them)."""
