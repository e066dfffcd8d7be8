"""Functions deployed through the Lambda management API: their code (a zip) and their store."""
