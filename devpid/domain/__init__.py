"""The domain: names, store keys, served paths and permission rules, in one place.

``keys`` (how state is named in the store), ``paths`` (the URL paths files are served at),
``entities`` (stages, projects, releases, files, docs, users that know both) and
``permissions`` (who may read, upload, modify). Nothing else spells a key or a ``+f/`` path
(``tests/test_domain_boundary.py``). The package imports nothing at load time, so any layer
(store, model, mirror, web) may import its modules without cycles.
"""
