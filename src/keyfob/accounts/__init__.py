"""People: the owner in personal mode, many users in hosted mode."""
