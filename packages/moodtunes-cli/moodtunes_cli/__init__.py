"""moodtunes command line and local stack: the top layer, above every service."""
