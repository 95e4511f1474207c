"""The inventory site: web app, import job and the one-command demo."""
