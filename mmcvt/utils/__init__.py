"""Small helpers that the tools share and that belong to no model, engine
or file format. Nothing is imported here: each module is imported where it
is used."""
