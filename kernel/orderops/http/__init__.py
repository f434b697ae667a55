"""HTTP: the processors' web app, its users and their roles."""
